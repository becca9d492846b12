"""``hylo-search export NAME --trial N``: a trial's layout as a file promote / train / upcycle read directly."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write a trial's layout file (for promote / train / upcycle)",
        description="Write the layout of completed trial N of study NAME as YAML (layout, teacher, upcycle "
        "options, the trial's objectives). Default: <study folder>/exports/trial_<N>.yaml.",
    )
    parser.add_argument("name", metavar="NAME", help="study name or folder")
    parser.add_argument("--trial", type=int, required=True, help="trial number (see `hylo-search pareto`)")
    parser.add_argument("--out", default=None, help="output file (default <study folder>/exports/trial_N.yaml)")
    parser.add_argument("--storage", default=None, help="storage URL if not the one the study folder records")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..results import export_layout
    from ..runs import open_run

    path = export_layout(open_run(args.name, args.storage), args.trial, args.out)
    print(f"wrote {path}")
    print(f"  hylo-search upcycle TEACHER --layout {path} --out DIR    (or promote / train with --layout {path})")
    return 0
