"""Each trial a Ray task with the study's resources (``num_gpus``, ``num_cpus``, ``memory_gb``).

The driver joins a running cluster with ``address`` (``ray start --head`` on one machine, ``ray start --address``
on the others; ``auto``: the cluster started last on this machine; ``$RAY_ADDRESS`` when no address is given) or
starts a private local one, bound to 127.0.0.1 (see :func:`_import_ray`). Concurrency is what the cluster has free
when the study starts: free GPUs divided by the GPUs a trial needs (CPUs when trials need no GPU), capped by
``max_concurrent``. Every node must have this package installed, at the driver's version (a task on a node with
another version returns a failure naming both instead of running), and a shared or identical ``--out`` path for a
local teacher / the layer cache. Ray places each task; the record a task returns names the node it ran on.

A task whose worker process or node dies (a node lost mid-trial, the OOM killer) comes back as a failure record of
kind ``lost`` (or ``oom``), which the driver fails and retries. Trials never retry inside Ray (``max_retries=0``):
the driver decides what a failure means.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from typing import Any

from hylo_model.version import __version__

from ..errors import UsageError
from ..worker.entry import run_task
from ..worker.tasks import Failure

# Ray's switch for "clusters on this OS": when off, Ray takes 127.0.0.1 as the node's address, and its servers
# then listen on loopback only (when on, `--node-ip-address 127.0.0.1` is rewritten to the machine's address).
LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


class RayExecutor:
    def __init__(self, resources: Any, address: str | None = None, max_concurrent: int | None = None) -> None:
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        ray = _import_ray(local=address == "local")
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                     configure_logging=True)
        options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus,
                                   "max_retries": 0}
        if resources.memory_gb:
            options["memory"] = int(resources.memory_gb * 2**30)
        self._remote = ray.remote(run_versioned).options(**options)
        key, need = ("GPU", resources.num_gpus) if resources.num_gpus else ("CPU", max(resources.num_cpus, 1e-9))
        total = ray.cluster_resources()
        if math.floor(total.get(key, 0) / need) < 1:
            raise RuntimeError(f"the Ray cluster ({total.get('GPU', 0):g} GPUs, {total.get('CPU', 0):g} CPUs) cannot "
                               f"hold one trial ({resources.num_gpus:g} GPUs, {resources.num_cpus:g} CPUs)")
        # What is free now (another job may hold part of the cluster); at least one trial, which Ray queues.
        slots = max(1, math.floor(ray.available_resources().get(key, 0) / need))
        self.capacity = min(slots, max_concurrent) if max_concurrent else slots
        self._refs: dict[Any, int] = {}

    def submit(self, number: int, task: Any) -> None:
        self._refs[self._remote.remote(task, __version__)] = number

    def wait(self, timeout: float) -> list[tuple[int, dict[str, Any]]]:
        if not self._refs:
            return []
        ready, _ = self._ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            number = self._refs.pop(ref)
            try:
                done.append((number, self._ray.get(ref)))
            except Exception as error:  # noqa: BLE001 — a lost worker/node is one failed trial, not a crash
                done.append((number, Failure.from_exception(error, _kind(error)).fields()))
        return done

    def close(self) -> None:
        for ref in list(self._refs):
            self._ray.cancel(ref, force=True)
        self._refs.clear()
        self._ray.shutdown()


def run_versioned(task: Any, driver_version: str) -> dict[str, Any]:
    """What a Ray worker runs: the task, if this node's package is the driver's version; else a failure record
    naming both versions and the node, without running anything (a mixed cluster would compare scores made by
    different code)."""
    if __version__ != driver_version:
        record = {**{k: getattr(task, k) for k in ("number", "token", "layers") if hasattr(task, k)},
                  "host": platform.node(), "node": _ray_node_id(), "pid": os.getpid(), "hylo_version": __version__}
        record.update(Failure("exception", f"version mismatch: node {record['node']} ({record['host']}) runs "
                              f"hylo-search {__version__}, the driver {driver_version}; install the same version "
                              "on every node").fields())
        return record
    return run_task(task)


def _ray_node_id() -> str:
    ray = sys.modules.get("ray")
    return ray.get_runtime_context().get_node_id() if ray is not None and ray.is_initialized() else "?"


def _import_ray(local: bool) -> Any:
    """Import Ray; for a private local cluster, with Ray's single-machine switch (:data:`LOCAL_ONLY_ENV`) off during
    the import, so the cluster's servers listen on 127.0.0.1 only. Ray reads the switch once, at import: it is set
    for that moment only (children do not inherit it, and a ``ray start`` run later from this environment can
    still join clusters), and not at all if Ray is already imported or the user set it."""
    try:
        if local and "ray" not in sys.modules and LOCAL_ONLY_ENV not in os.environ:
            os.environ[LOCAL_ONLY_ENV] = "0"
            try:
                import ray
            finally:
                del os.environ[LOCAL_ONLY_ENV]
        import ray
    except ModuleNotFoundError as error:
        if error.name != "ray":
            raise
        raise UsageError("--executor ray needs Ray, an optional extra: pip install 'hylo-search[ray]'") from None
    return ray


def _kind(error: Exception) -> str:
    """A Ray error's failure kind: the task's process or node died (``lost``), was killed for memory (``oom``),
    or raised (``exception``; the task itself turns its own errors into records, so this is rare)."""
    name = type(error).__name__
    if "OutOfMemory" in name:
        return "oom"
    if name in ("WorkerCrashedError", "NodeDiedError", "ActorDiedError", "RayActorError", "ObjectLostError",
                "OwnerDiedError", "TaskCancelledError", "LocalRayletDiedError", "RaySystemError"):
        return "lost"
    return "exception"
