"""``hylo-search library NAME|PATH``: build (or complete) a study's per-layer block library and sensitivity table."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "library", help="train every (layer, block) of a study's space once, and score each block's sensitivity",
        description="For every (layer, mixer, rank) of the study's space, train the converted mixer once by local "
        "distillation (the align stage of the library recipe: the teacher's layer input -> the teacher's layer "
        "output), in parallel over the study's executor, and score the teacher with only that block swapped in "
        "(held-out KL, probe drop). Blocks are cached under the study folder; rerunning trains only what is "
        "missing. Writes <folder>/library.json (see `hylo-search sensitivity`).",
    )
    parser.add_argument("study", metavar="NAME|PATH", help="shipped study name or study YAML file")
    parser.add_argument("--executor", choices=["local", "ray"], default=None, help="default: the YAML's")
    parser.add_argument("--address", default=None, help="Ray cluster to join (ray executor), e.g. 10.0.0.1:6379")
    parser.add_argument("--out", default=None, help="study folder (default ./hylo_runs/<name>)")
    parser.add_argument("--seed", type=int, default=None, help="override the study's seed")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..executors import make_executor, worker_threads
    from ..library import build_library
    from ..runs import study_dir
    from ..sensitivity import format_table, read_table
    from ..study import load_study

    loaded = load_study(args.study, seed=args.seed)
    folder = study_dir(loaded.name, args.out)
    name = args.executor or loaded.definition.executor.name
    console = Console(highlight=False, soft_wrap=True)

    def report(event: str, info: dict[str, Any]) -> None:
        if event == "library_started":
            console.print(f"library of {loaded.name}: {info['entries']} blocks in {info['tasks']} tasks "
                          f"({name} executor); folder {folder}")
        elif event == "library_task":
            console.print(f"  {info['token']:<6} layers {info['layers']}: trained {len(info['trained'])} "
                          f"({info['seconds']} s)")

    executor = make_executor(name, loaded, args.address or loaded.definition.executor.address)
    try:
        summary = build_library(loaded, folder, executor, worker_threads(loaded, name), report)
    finally:
        executor.close()
    console.print(f"{summary.entries} blocks: {summary.trained} trained, {summary.reused} reused, "
                  f"{summary.optimizer_steps} optimizer steps, {summary.seconds:.1f} s; table {summary.path}")
    for failure in summary.failures:
        print(f"hylo-search library: error: {failure}", file=sys.stderr)
    if summary.reused + summary.trained:
        console.print(format_table(read_table(folder), ["kl"]))
    return 1 if summary.failures else 0
