"""Each trial a Ray task with the study's resources (``num_gpus``, ``num_cpus``, ``memory_gb``).

The driver joins a running cluster with ``address`` (``ray start --head`` on one machine, ``ray start --address``
on the others) or starts a local one. Concurrency is what the cluster has free when the study starts: free GPUs
divided by the GPUs a trial needs (CPUs when trials need no GPU), capped by ``max_concurrent``. Every node must
have this package installed (and a shared or identical ``--out`` path for a local teacher / the layer cache). Ray places each task; the record
a task returns names the node it ran on. A task that dies (OOM kill, node loss) comes back as a failed record.
Trials never retry inside Ray (``max_retries=0``): the driver decides what a failure means.
"""

from __future__ import annotations

import math
from typing import Any

from ..worker.entry import run_task
from ..worker.tasks import Failure


class RayExecutor:
    def __init__(self, resources: Any, address: str | None = None, max_concurrent: int | None = None) -> None:
        import ray

        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
                     configure_logging=True)
        options: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus,
                                   "max_retries": 0}
        if resources.memory_gb:
            options["memory"] = int(resources.memory_gb * 2**30)
        self._remote = ray.remote(run_task).options(**options)
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
        self._refs[self._remote.remote(task)] = number

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


def _kind(error: Exception) -> str:
    """A Ray error's failure kind: the task's process or node died (``lost``), was killed for memory (``oom``),
    or raised (``exception``; the task itself turns its own errors into records, so this is rare)."""
    name = type(error).__name__
    if "OutOfMemory" in name:
        return "oom"
    if name in ("WorkerCrashedError", "NodeDiedError", "ActorDiedError", "RayActorError", "ObjectLostError",
                "OwnerDiedError", "TaskCancelledError"):
        return "lost"
    return "exception"
