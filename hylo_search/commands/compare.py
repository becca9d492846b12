"""``hylo-search compare A B``: do two runs of one study (say, two seeds) reach the same answer?"""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare", help="compare two runs of one study: rank agreement of the replicated means, front overlap",
        description="For two study folders of the same objectives (e.g. `hylo-search study tiny --seed 0` and "
        "`--seed 1000`): the Spearman correlation of each objective's replicated means over the layouts both runs "
        "replicated, with a bootstrap 95%% interval, and the Jaccard index of the two Pareto fronts' layout sets "
        "(and of their members that no trial could dominate within noise).",
    )
    parser.add_argument("folders", nargs=2, metavar="FOLDER", help="study folders (or names under the output root)")
    parser.add_argument("--format", choices=["text", "json"], default="text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..results.compare import compare_runs, format_comparison
    from ..search.storage import open_study_folder

    result = compare_runs(*(open_study_folder(f) for f in args.folders))
    print(json.dumps(result, indent=1) if args.format == "json" else format_comparison(result))
    return 0
