"""Executors run tasks for the driver (trials, shares of the block library); the driver keeps the Optuna ask/tell
loop.

Interface (duck-typed): ``capacity`` (tasks that may run at once), ``submit(number, task)``,
``wait(timeout) -> [(number, record), ...]`` (at least one finished task unless the timeout passes) and
``close()``; a task is run by :func:`hylo_search.worker.entry.run_task`. ``local`` runs tasks in the driver's process,
one at a time, on whatever the process sees (the study's ``resources`` apply to Ray only); ``ray`` runs each as a
Ray task with those resources, on a cluster it starts or joins (``--address``).

Ray is an optional extra, ``pip install 'hylo-search[ray]'`` (Ray core only; without it ``--executor ray`` is a
one-line usage error naming the extra). Ray Tune is not used: its ``OptunaSearch`` drops constraints in
multi-objective mode, and the driver must own ask/tell to check constraints before a trial costs anything
(:mod:`hylo_search.search.run`); Ray only places the work.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

EXECUTORS = ("local", "ray")


def make_executor(name: str, loaded: Any, address: str | None = None) -> Any:
    resources = loaded.definition.executor.resources
    if name == "local":
        from .local import LocalExecutor

        return LocalExecutor()
    if name == "ray":
        from .ray import RayExecutor

        return RayExecutor(resources, address, loaded.definition.executor.max_concurrent)
    raise ValueError(f"unknown executor {name!r}; allowed: {', '.join(EXECUTORS)}")


def run_all(executor: Any, tasks: Iterable[Any], poll: float = 5.0) -> Iterator[tuple[int, dict[str, Any]]]:
    """Submit ``tasks`` (numbered from 0 in order), at most ``executor.capacity`` at a time, and yield
    ``(number, record)`` as each finishes."""
    pending, running = list(enumerate(tasks)), 0
    while pending or running:
        while pending and running < executor.capacity:
            executor.submit(*pending.pop(0))
            running += 1
        for number, record in executor.wait(timeout=poll):
            running -= 1
            yield number, record


def worker_threads(loaded: Any, name: str) -> int | None:
    """Torch threads of a worker: as many as the CPUs a trial reserves (``executor.resources.num_cpus``), for Ray
    workers and local runs alike; None (torch's default) when the study reserves none. Torch's default takes every
    core, which oversubscribes a machine where other trials or jobs run."""
    cpus = loaded.definition.executor.resources.num_cpus
    return max(1, int(cpus)) if cpus else None
