"""``hylo-search sensitivity STUDY``: the block library's sensitivity table as a heat map (layers x blocks)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sensitivity", help="show the cost of swapping each library block alone into the teacher",
        description="Per (layer, block) of the study's library: the held-out KL of the teacher with only that block "
        "replaced, and the probe drop at the study's target length; a heat map of layers x blocks. STUDY is a study "
        "folder, a name under the output root, or a study definition. Build the table with `hylo-search library`.",
    )
    parser.add_argument("study", metavar="STUDY", help="study folder, name, or definition")
    parser.add_argument("--metric", action="append", choices=["kl", "probe_drop", "ce", "align_after", "kl_drop"],
                        help="metric(s) to show (default: kl, probe_drop and the restore kl_drop where measured)")
    parser.add_argument("--format", choices=["table", "json", "csv"], default="table")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="also write the heat map(s) as a PNG")
    parser.add_argument("--out", default=None, help="study folder (default ./hylo_runs/<name>)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..library.sensitivity import format_table, plot_heat_map, read_table, table_folder

    table = read_table(table_folder(args.study, args.out))
    metrics = args.metric or ["kl"] + (["probe_drop"] if any(r.get("probe_drop") is not None
                                                             for r in table["rows"]) else []) + \
        (["kl_drop"] if table.get("restore") else [])
    print(format_table(table, metrics, args.format))
    if args.plot:
        try:
            path = plot_heat_map(table, metrics, Path(args.plot))
        except RuntimeError as error:
            print(f"hylo-search sensitivity: error: {error}", file=sys.stderr)
            return 1
        print(f"plot written to {path}")
    return 0
