"""``hylo-search pareto NAME``: the feasible non-dominated trials of a study, the baselines' standing, a plot."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pareto", help="show a study's Pareto front (feasible, non-dominated trials)",
        description="Print the feasible non-dominated completed trials of study NAME (a name under the output root "
        "or a study folder); baselines are marked. --plot draws the front with the baselines marked.",
    )
    parser.add_argument("name", metavar="NAME", help="study name (under ./hylo_runs or $HYLO_RUNS_DIR) or folder")
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table")
    parser.add_argument("--plot", default=None, metavar="FILE.html|FILE.png",
                        help="also write a plot: .png (2-D projections, the third objective as colour) or .html "
                        "(interactive; self-contained, about 2 MB)")
    parser.add_argument("--plot-cdn", action="store_true",
                        help="with --plot FILE.html: load plotly.js from its CDN when opened (a few kB file)")
    parser.add_argument("--storage", default=None, help="storage URL if not the one the study folder records")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..results.front import format_front, front_report, plot_front
    from ._reports import open_reported

    if args.plot_cdn and not (args.plot or "").endswith(".html"):
        from ..errors import UsageError

        raise UsageError("--plot-cdn applies to --plot FILE.html only")
    handle = open_reported(args.name, args.storage, sys.stdout if args.format == "table" else sys.stderr)
    print(format_front(front_report(handle), args.format))
    if args.plot:
        try:
            path = plot_front(handle, Path(args.plot), cdn=args.plot_cdn)
        except RuntimeError as error:
            print(f"hylo-search pareto: error: {error}", file=sys.stderr)
            return 1
        print(f"plot written to {path}")
    return 0
