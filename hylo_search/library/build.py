"""The block library's driver side: plan the (token, layers) tasks of a study's space, run them on its executor
(each worker trains the missing blocks and scores their sensitivity, :mod:`hylo_search.worker.blocks`), then a
second round of restore tasks (the KL-guided scores: one layer restored to attention or MLA in the all-linear
student assembled from the blocks), and gather both into the study folder's sensitivity table (``library.json``:
``rows`` per block swapped alone into the teacher, ``restore`` per layer restored alone in the all-linear student)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import paths
from ..executors import run_all
from ..space.baselines import Restore, restore_plan
from ..space.compiled import token_order
from ..worker.blocks import align_recipe
from ..worker.tasks import Failure, LibraryTask
from .solver import library_entries


@dataclass
class LibrarySummary:
    entries: int
    trained: int
    reused: int
    optimizer_steps: int
    seconds: float
    path: Path
    failures: list[str]
    restore_rows: int = 0
    restore_scored: int = 0  # assembled layouts scored now (the rest came from the cache)


def plan_tasks(entries: list[tuple[int, str]], capacity: int,
               layers_per_task: int | None = None) -> list[tuple[str, list[int]]]:
    """(token, layers) tasks: each token's layers split into chunks of ``layers_per_task``, or by default into
    enough chunks that ``capacity`` workers all have work (one chunk per token when workers are fewer)."""
    by_token: dict[str, list[int]] = {}
    for layer, token in entries:
        by_token.setdefault(token, []).append(layer)
    tasks = []
    for token in sorted(by_token, key=token_order):
        layers = by_token[token]
        tasks += [(token, part) for part in _split(layers, len(by_token), capacity, layers_per_task)]
    return tasks


def plan_restore_tasks(space: Any, capacity: int,
                       layers_per_task: int | None = None) -> list[tuple[Restore, list[int]]]:
    """(restore group, layers) tasks of :func:`~hylo_search.space.baselines.restore_plan`, split like
    :func:`plan_tasks` (each task also scores its group's all-linear layout, or reads it from the cache)."""
    plan = restore_plan(space)
    return [(group, part) for group in plan for part in _split(list(group.layers), len(plan), capacity,
                                                                 layers_per_task)]


def _split(layers: list[int], groups: int, capacity: int, layers_per_task: int | None) -> list[list[int]]:
    chunks = math.ceil(len(layers) / layers_per_task) if layers_per_task else \
        min(len(layers), math.ceil(capacity / groups))
    bounds = [round(k * len(layers) / chunks) for k in range(chunks + 1)]  # near-equal, in layer order
    return [layers[a:b] for a, b in zip(bounds, bounds[1:])]


def build_library(loaded: Any, folder: Path, executor: Any, threads: int | None = None,
                  report: Callable[[str, dict[str, Any]], None] | None = None) -> LibrarySummary:
    """Build (or complete) the library of ``loaded`` with ``executor`` and write ``<folder>/library.json``.

    Every task is submitted; a worker trains only the blocks whose file is missing and scores only the missing
    sensitivities and restore scores, so a complete library costs one teacher load per worker and no training.
    Restore tasks run once every block task succeeded (they assemble layouts from the blocks)."""

    report = report or (lambda event, info: None)
    align_recipe(loaded.definition)  # a recipe problem is a usage error, before any task
    entries = library_entries(loaded.space)
    tasks = plan_tasks(entries, executor.capacity, loaded.definition.library_config().layers_per_task)
    resolved, study_dir = loaded.resolved(), str(folder.resolve())
    report("library_started", {"entries": len(entries), "tasks": len(tasks)})
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    steps = 0
    work = [LibraryTask(resolved, study_dir, token, layers, threads) for token, layers in tasks]
    for number, record in run_all(executor, work):
        token, layers = tasks[number]
        failure = Failure.of(record)
        if failure is not None:
            failures.append(f"{token} at layers {layers}: {failure.text}")
            continue
        rows += [{**row, "node": record.get("node")} for row in record["rows"]]
        steps += record["optimizer_steps"]
        report("library_task", {"token": token, "layers": layers, "trained": record["trained"],
                                "seconds": record.get("seconds")})
    rows.sort(key=lambda r: (r["layer"], token_order(r["token"])))
    config = loaded.definition.library_config()
    restore_tasks = plan_restore_tasks(loaded.space, executor.capacity, config.layers_per_task)
    restore: list[dict[str, Any]] = []
    scored = 0
    if not failures:
        work = [LibraryTask(resolved, study_dir, group.linear, layers, threads, kind="restore", keep=group.keep,
                            base=list(group.base)) for group, layers in restore_tasks]
        for number, record in run_all(executor, work):
            group, layers = restore_tasks[number]
            failure = Failure.of(record)
            if failure is not None:
                failures.append(f"restore {group.keep} in all-{group.linear} at layers {layers}: {failure.text}")
                continue
            restore += record["rows"]
            scored += record["scored"]
            report("library_restore", {"linear": group.linear, "keep": group.keep, "layers": layers,
                                       "scored": record["scored"], "seconds": record.get("seconds")})
    restore.sort(key=lambda r: (token_order(r["linear"]), token_order(r["keep"]), r["layer"]))
    expected = sum(len(layers) for _, layers in restore_tasks)
    table = {"study": loaded.name, "fingerprint": loaded.fingerprint(), "teacher": loaded.definition.teacher,
             "target_length": loaded.definition.target_length, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
             "complete": not failures and len(rows) == len(entries) and len(restore) == expected, "rows": rows,
             "restore": restore}
    path = folder / paths.LIBRARY_TABLE
    paths.atomic_write_text(path, json.dumps(table, indent=1) + "\n")
    trained = sum(r["trained"] for r in rows)
    return LibrarySummary(len(entries), trained, len(rows) - trained, steps, time.perf_counter() - began, path,
                          failures, len(restore), scored)
