"""``hylo-search library NAME|PATH``: build (or complete) a study's per-layer block library and sensitivity table."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._study_args import add_study_arguments, with_executor


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "library", help="train every (layer, block) of a study's space once, and score each block's sensitivity",
        description="For every (layer, mixer, rank) of the study's space, train the converted mixer once by local "
        "distillation (the align stage of the library recipe: the teacher's layer input -> the teacher's layer "
        "output), in parallel over the study's executor, and score the teacher with only that block swapped in "
        "(held-out KL, probe drop). Blocks are cached under the study folder; rerunning trains only what is "
        "missing. Writes <folder>/library.json (see `hylo-search sensitivity`).",
    )
    add_study_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..library.build import build_library
    from ..library.sensitivity import format_table, read_table

    console = Console(highlight=False, soft_wrap=True)

    def work(loaded: Any, folder: Any, executor: Any, threads: Any, name: str) -> Any:
        def report(event: str, info: dict[str, Any]) -> None:
            if event == "library_started":
                console.print(f"library of {loaded.name}: {info['entries']} blocks in {info['tasks']} tasks "
                              f"({name} executor); folder {folder}")
            elif event == "library_task":
                console.print(f"  {info['token']:<6} layers {info['layers']}: trained {len(info['trained'])} "
                              f"({info['seconds']} s)")

        return build_library(loaded, folder, executor, threads, report)

    folder, summary = with_executor(args, work)
    console.print(f"{summary.entries} blocks: {summary.trained} trained, {summary.reused} reused, "
                  f"{summary.optimizer_steps} optimizer steps, {summary.seconds:.1f} s; table {summary.path}")
    for failure in summary.failures:
        print(f"hylo-search library: error: {failure}", file=sys.stderr)
    if summary.reused + summary.trained:
        console.print(format_table(read_table(folder), ["kl"]))
    return 1 if summary.failures else 0
