"""The worker side: ``run_task(task) -> record`` (what the local and Ray executors call) runs a trial
(:class:`TrialTask`, :func:`run_trial`) or a share of the block library (:class:`~.library.LibraryTask`).

A :class:`StudyRuntime` holds what every trial of a study shares — the teacher (loaded once per process), its
tokenizer and fingerprint, the held-out sequences (and the teacher's log-probabilities on them), the layer cache,
the block library and the proxy / probe plug-ins — and is kept per process, so a Ray worker that runs several
trials loads the teacher once. Tasks never raise: OOM, NaN and exceptions come back as a record with
``status: fail``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from .layer_cache import LayerCache, teacher_fingerprint
from .library import Library, LibraryTask
from .objectives import ProbeResult, ProxyResult, probe_class, proxy_class
from .study import ProxyConfig, StudyDef
from .teachers import teacher_directory

_TEACHER_LOGPROB_LIMIT = 64 * 2**20  # cache the teacher's held-out log-probs only below this many floats


@dataclass
class TrialTask:
    """Everything a worker needs, as plain data (pickled to Ray workers). ``proxy``: a proxy config (mapping)
    that replaces the study's for this trial (a first tier, the audit's longer proxy)."""

    study: dict[str, Any]
    study_dir: str
    number: int
    tokens: list[str]
    seed: int
    threads: int | None = None
    proxy: dict[str, Any] | None = None


class StudyRuntime:
    _current: tuple[str, StudyRuntime] | None = None

    @classmethod
    def get(cls, study: dict[str, Any], study_dir: str) -> StudyRuntime:
        """The runtime of ``study`` in this process (one at a time: another study's is dropped first)."""
        key = hashlib.sha256(json.dumps([study, study_dir], sort_keys=True).encode()).hexdigest()
        if cls._current is None or cls._current[0] != key:
            cls._current = None
            cls._current = (key, cls(study, Path(study_dir)))
        return cls._current[1]

    def __init__(self, study: dict[str, Any], study_dir: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.definition = StudyDef.model_validate(study)
        self.study_dir = study_dir
        cache_dir = study_dir / "cache"
        wants_gpu = self.definition.executor.resources.num_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if wants_gpu else "cpu")
        # CPU runs in float32 (bf16 matmuls are slow there); GPUs in bf16.
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        teacher_dir = teacher_directory(self.definition.teacher, cache_dir)
        self.teacher = AutoModelForCausalLM.from_pretrained(
            teacher_dir, dtype=self.dtype, trust_remote_code=False, use_safetensors=True).to(self.device).eval()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.definition.tokenizer or teacher_dir,
                                                           trust_remote_code=False)
        except (OSError, ValueError):
            self.tokenizer = None
        self.fingerprint = teacher_fingerprint(self.teacher)
        options = self.definition.upcycle.options()
        self.layer_cache = LayerCache(cache_dir / "layers", self.fingerprint, options, self.definition.seed)
        self._teacher_logprobs: list[torch.Tensor] | None = None
        self._documents: dict[tuple[int, int], torch.Tensor] = {}
        self._proxies: dict[str, Any] = {}
        self.proxy_for(None)  # the study's own proxy, built (and its options checked) up front
        self.probes = probe_class(self.definition.probes.kind)(self.definition.probes, self.definition)
        self.library = Library(self)

    def proxy_for(self, config: dict[str, Any] | None) -> Any:
        """The proxy plug-in for ``config`` (a proxy config mapping; None: the study's), one per process."""
        proxy = ProxyConfig.model_validate(config) if config is not None else self.definition.proxy
        key = proxy.model_dump_json()
        if key not in self._proxies:
            self._proxies[key] = proxy_class(proxy.kind)(proxy, self.definition)
        return self._proxies[key]

    # -------------------------------------------------------------------------------------------------- data
    @functools.cached_property
    def heldout(self) -> torch.Tensor:
        """``[heldout_sequences, heldout_length]`` held-out token ids (drawn on first use: a recipe proxy scores
        on its own evaluation split and never needs them)."""
        data = self.definition.data
        return self.sequences(data.heldout_length, data.heldout_sequences, stream=0)

    def sequences(self, length: int, count: int, stream: int) -> torch.Tensor:
        """``[count, length]`` token ids from the study's data source, fixed by (seed, stream, length)."""
        from .data import token_sequences

        return token_sequences(self.definition.data.source, count, length, self.definition.seed * 1000 + stream,
                               teacher=self.teacher, tokenizer=self.tokenizer).to(self.device)

    def training_documents(self, length: int, count: int) -> torch.Tensor:
        """Token documents for a proxy recipe from a built-in source (drawn once per process, apart from the
        held-out stream), on the CPU."""
        key = (length, count)
        if key not in self._documents:
            self._documents[key] = self.sequences(length, count, stream=-1).cpu()
        return self._documents[key]

    # ----------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def heldout_scores(self, student: Any, batch: int = 4) -> tuple[float, float]:
        """Mean per-token KL(teacher || student) and the student's next-token cross-entropy on the held-out set."""
        chunks = self.heldout.split(batch)
        cached = self._teacher_logprobs
        keep: list[torch.Tensor] | None = [] if cached is None and \
            self.heldout.numel() * self.teacher.config.vocab_size <= _TEACHER_LOGPROB_LIMIT else None
        kl_sum = ce_sum = 0.0
        kl_n = ce_n = 0
        for index, ids in enumerate(chunks):
            if cached is not None:
                teacher = cached[index]
            else:
                teacher = self.teacher(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
            student_lp = student(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)
            kl = (teacher.exp() * (teacher - student_lp)).sum(-1)
            ce = -student_lp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
            kl_sum += kl.sum().item()
            ce_sum += ce.sum().item()
            kl_n += kl.numel()
            ce_n += ce.numel()
            if keep is not None:
                keep.append(teacher)
        if keep is not None:
            self._teacher_logprobs = keep
        return kl_sum / kl_n, ce_sum / ce_n

    def probe_score(self, model: Any, length: int, samples: int) -> float | None:
        """The study's probes at one length on ``model`` (``probe_accuracy@length``), or None without probes."""
        config = self.definition.probes
        if not length or config.kind == "none":
            return None
        probes = probe_class(config.kind)(config.model_copy(update={"lengths": [length], "samples": samples}),
                                          self.definition)
        metrics = probes(TrialContext(self, [], self.definition.seed, -1), model).metrics
        value = metrics.get(f"probe_accuracy@{length}", metrics.get("probe_accuracy"))
        return float(value) if value is not None else None

    @torch.no_grad()
    def agreement(self, model: Any, length: int, samples: int, batch: int = 4) -> float:
        ids_all = self.sequences(length, samples, stream=length)
        start = length - max(1, length // 4)
        hits = total = 0
        for ids in ids_all.split(batch):
            want = self.teacher(input_ids=ids, use_cache=False).logits[:, start:].argmax(-1)
            got = model(input_ids=ids, use_cache=False).logits[:, start:].argmax(-1)
            hits += (want == got).sum().item()
            total += want.numel()
        return hits / total


@dataclass
class TrialContext:
    """What a plug-in sees: the runtime (teacher, tokenizer, held-out data), the layout, the seed, and the student
    (built lazily through the layer cache)."""

    runtime: StudyRuntime
    tokens: list[str]
    seed: int
    number: int
    timings: dict[str, float] = field(default_factory=dict)
    cache_stats: dict[str, int] = field(default_factory=dict)
    _student: Any = None

    @property
    def layout(self) -> str:
        return ",".join(self.tokens)

    def student(self) -> Any:
        if self._student is None:
            with timed(self.timings, "upcycle_s"):
                self._student, self.cache_stats = self.runtime.layer_cache.build(self.runtime.teacher, self.tokens)
        return self._student

    def assembled(self) -> Any:
        """The layout built from the block library (no training)."""
        if self._student is None:
            with timed(self.timings, "assemble_s"):
                self._student, self.cache_stats = self.runtime.library.assemble(self.tokens)
        return self._student


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = round(time.perf_counter() - start, 4)


def run_task(task: TrialTask | LibraryTask) -> dict[str, Any]:
    """What an executor runs: a trial, or a share of the block library."""
    if isinstance(task, LibraryTask):
        return run_library_task(task)
    return run_trial(task)


@contextmanager
def _worker(record: dict[str, Any], threads: int | None) -> Iterator[None]:
    """The worker side of every task: its torch threads, where it ran, and any failure stored in the record as
    ``failure`` (``oom:`` / ``nan:`` / ``exception:``, with the traceback's tail) instead of raised — one failed task
    must not stop the study (the driver reports it)."""
    if threads:
        torch.set_num_threads(threads)
    record.update(host=platform.node(), pid=os.getpid(), node=_node_id(), status="fail")
    try:
        yield
    except torch.OutOfMemoryError as error:
        record["failure"] = f"oom: {str(error).splitlines()[0] if str(error) else 'out of memory'}"
    except Exception as error:  # noqa: BLE001
        # The training code reports a diverged run as NonFiniteLossError: that is a NaN failure, not a bug.
        kind = "nan" if "NonFinite" in type(error).__name__ else "exception"
        record["failure"] = f"{kind}: {type(error).__name__}: {error}"
        record["traceback"] = "".join(traceback.format_exc().splitlines(keepends=True)[-12:])
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def run_library_task(task: LibraryTask) -> dict[str, Any]:
    """Train the missing blocks of ``task`` and score their sensitivity; failures are records."""
    record: dict[str, Any] = {"token": task.token, "layers": task.layers}
    began = time.perf_counter()
    with _worker(record, task.threads):
        runtime = StudyRuntime.get(task.study, task.study_dir)
        record.update(runtime.library.build(task.token, list(task.layers)), status="ok")
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
        ctx = TrialContext(runtime, list(task.tokens), task.seed, task.number, timings)
        with timed(timings, "proxy_s"):
            proxy: ProxyResult = proxy_plugin(ctx)
        with timed(timings, "probes_s"):
            probes: ProbeResult = runtime.probes(ctx, proxy.model)
        metrics = {**proxy.metrics, **probes.metrics}
        bad = [k for k, v in metrics.items() if not math.isfinite(float(v))]
        record.update(
            metrics={k: float(v) for k, v in metrics.items()}, losses=proxy.losses, layer_table=proxy.layers,
            probe_table=probes.table, details=proxy.details, cache=ctx.cache_stats,
            teacher_fingerprint=runtime.fingerprint, device=str(runtime.device),
        )
        if bad:
            record["failure"] = f"nan: {', '.join(bad)} not finite"
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
