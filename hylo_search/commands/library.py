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
    from ._progress import LibraryLines, live_bar, say

    console = Console(highlight=False, soft_wrap=True)
    # Loading a study imports torch and builds its teacher: seconds to a minute before the first task line.
    say(console, f"library {args.study}: loading the study and its teacher")

    def work(loaded: Any, folder: Any, executor: Any, threads: Any, name: str) -> Any:
        say(console, f"library of {loaded.name}: folder {folder}, {name} executor "
            f"({executor.capacity} task(s) at a time)")
        lines = LibraryLines(console, f"library of {loaded.name}")
        with live_bar(console, "library tasks", 0) as update:
            lines.update = update
            return build_library(loaded, folder, executor, threads, lines.report)

    folder, summary = with_executor(args, work)
    say(console, f"{summary.entries} blocks: {summary.trained} trained, {summary.reused} reused, "
        f"{summary.optimizer_steps} optimizer steps, {summary.seconds:.1f} s; table {summary.path}")
    for failure in summary.failures:
        print(f"hylo-search library: error: {failure}", file=sys.stderr)
    if summary.reused + summary.trained:
        say(console, format_table(read_table(folder), ["kl"]))
    return 1 if summary.failures else 0
