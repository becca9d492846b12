"""``hylo-search show NAME TRIAL``: one trial — its layout drawn per layer, objectives, probes, timings."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("show", help="show one trial of a study",
                                   description="Show trial TRIAL of study NAME: layout per layer, objectives, "
                                   "constraints, probe and per-layer tables, losses, timings, failure reason.")
    parser.add_argument("name", metavar="NAME", help="study name or folder")
    parser.add_argument("trial", type=int, metavar="TRIAL", help="trial number")
    parser.add_argument("--storage", default=None, help="storage URL if not the one the study folder records")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..results.trial import describe_trial
    from ._reports import open_reported

    console = Console(highlight=False, soft_wrap=True)
    handle = open_reported(args.name, args.storage, sys.stdout)
    for part in describe_trial(handle, args.trial):
        console.print(part)
    return 0
