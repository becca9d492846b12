"""The worker's entry point: ``run_task(task) -> record``, what the local and Ray executors call, for a trial
(:class:`~.tasks.TrialTask`: upcycle -> proxy -> probes) or a share of the block library
(:class:`~.tasks.LibraryTask`). A task never raises: a failure comes back in its record (:class:`~.tasks.Failure`).
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch

from hylo_model.version import __version__

from ..scoring.api import ProbeResult, ProxyResult, TrialContext, timed
from .runtime import StudyRuntime
from .tasks import Failure, LibraryTask, TrialTask


def run_task(task: TrialTask | LibraryTask) -> dict[str, Any]:
    """What an executor runs: a trial, or a share of the block library."""
    if isinstance(task, LibraryTask):
        return run_library_task(task)
    return run_trial(task)


@contextmanager
def _worker(record: dict[str, Any], threads: int | None) -> Iterator[None]:
    """The worker side of every task: its torch threads, where it ran, and any failure stored in the record
    (:class:`~.tasks.Failure`) instead of raised — one failed task must not stop the study (the driver reports it)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # restored after the task: a local task runs in the driver's process
    record.update(host=platform.node(), pid=os.getpid(), node=_node_id(), hylo_version=__version__, status="fail")
    try:
        yield
    except Exception as error:  # noqa: BLE001 — a failed task is a record (OOM, NaN, any error), not a crash
        record.update(Failure.from_exception(error).fields())
    finally:
        torch.set_num_threads(before)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_library_task(task: LibraryTask) -> dict[str, Any]:
    """Train the missing blocks of ``task`` and score their sensitivity, or (``kind`` restore) score its
    restorations; failures are records."""
    record: dict[str, Any] = {"token": task.token, "layers": task.layers}
    began = time.perf_counter()
    with _worker(record, task.threads):
        runtime = StudyRuntime.get(task.study, task.study_dir)
        if task.kind == "restore":
            result = runtime.library.restore(task.token, task.keep, list(task.base), list(task.layers))
        else:
            result = runtime.library.build(task.token, list(task.layers))
        record.update(result, status="ok")
    record["seconds"] = round(time.perf_counter() - began, 4)
    return record


def run_trial(task: TrialTask) -> dict[str, Any]:
    """Run one trial (upcycle -> proxy -> probes) and return its record; failures are records, not exceptions."""
    record: dict[str, Any] = {"number": task.number}
    timings: dict[str, float] = {}
    with _worker(record, task.threads):
        with timed(timings, "setup_s"):
            runtime = StudyRuntime.get(task.study, task.study_dir)
            proxy_plugin = runtime.proxy_for(task.proxy)
            probe_plugin = runtime.probes_for(task.probes)
        ctx = TrialContext(runtime, list(task.tokens), task.seed, task.number, timings)
        with timed(timings, "proxy_s"):
            proxy: ProxyResult = proxy_plugin(ctx)
        with timed(timings, "probes_s"):
            probes: ProbeResult = probe_plugin(ctx, proxy.model)
        metrics = {**proxy.metrics, **probes.metrics}
        bad = [k for k, v in metrics.items() if not math.isfinite(float(v))]
        record.update(
            metrics={k: float(v) for k, v in metrics.items()}, losses=proxy.losses, layer_table=proxy.layers,
            probe_table=probes.table, details=proxy.details, cache=ctx.cache_stats,
            teacher_fingerprint=runtime.fingerprint, device=str(runtime.device),
        )
        if bad:
            record.update(Failure("nan", f"{', '.join(bad)} not finite").fields())
        else:
            record["status"] = "ok"
    record["timings"] = timings
    return record


def _node_id() -> str:
    """The Ray node this runs on (inside a Ray task), else ``local:<host>``."""
    ray = sys.modules.get("ray")  # only a Ray worker has imported it; never import it for a local run
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return f"local:{platform.node()}"
