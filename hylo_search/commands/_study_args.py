"""What the commands that run a study's work share (``study``, ``library``, ``audit``): the arguments that name the
study and where it runs, and running a function with the study's executor open."""

from __future__ import annotations

import argparse
from typing import Any, Callable


def add_study_arguments(parser: argparse.ArgumentParser, storage_help: str | None = None) -> None:
    """``NAME|PATH``, ``--executor``, ``--address``, ``--out``, ``--seed`` (and ``--storage`` given its help)."""
    parser.add_argument("study", metavar="NAME|PATH", help="shipped study name or study YAML file")
    parser.add_argument("--executor", choices=["local", "ray"], default=None, help="default: the YAML's")
    parser.add_argument("--address", default=None, help="Ray cluster to join (ray executor), e.g. 10.0.0.1:6379")
    if storage_help:
        parser.add_argument("--storage", default=None, help=storage_help)
    parser.add_argument("--out", default=None, help="study folder (default ./hylo_runs/<name>)")
    parser.add_argument("--seed", type=int, default=None, help="override the study's seed")


def with_executor(args: argparse.Namespace, work: Callable[..., Any]) -> tuple[Any, Any]:
    """Load the study, open its executor (``--executor`` / ``--address`` over the YAML's), call
    ``work(loaded, folder, executor, threads, executor_name)`` and close the executor. Returns ``(folder,
    result)``."""
    from ..executors import make_executor, worker_threads
    from ..paths import study_dir
    from ..study import check_inputs, load_study
    from ._outputs import is_study_folder, output_folder

    loaded = load_study(args.study, seed=args.seed)
    folder = study_dir(loaded.name, args.out)
    check_inputs(loaded)
    output_folder(folder, "--out" if args.out else "study folder", is_study_folder, "study")
    name = args.executor or loaded.definition.executor.name
    executor = make_executor(name, loaded, args.address or loaded.definition.executor.address)
    try:
        return folder, work(loaded, folder, executor, worker_threads(loaded, name), name)
    finally:
        executor.close()
