"""``hylo-search list``: the studies under the output root, with trial counts and status."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list", help="list studies under the output root",
                                   description="List the study folders under ./hylo_runs ($HYLO_RUNS_DIR): trials "
                                   "by state, front size, and whether a driver is running.")
    parser.add_argument("--root", default=None, help="output root (default ./hylo_runs or $HYLO_RUNS_DIR)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from ..errors import UsageError
    from ..paths import MANIFEST, output_root
    from ..search.storage import DriverLock, Manifest, check_storage_url, open_study_folder
    from ..search.trials import pareto_front, trial_counts

    root = Path(args.root) if args.root else output_root()
    folders = sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))
    if not folders:
        print(f"no studies under {root}/")
        return 0
    table = Table(title=f"studies under {root}/")
    for column in ("study", "status", "complete", "failed", "infeasible", "waiting", "front", "folder"):
        table.add_column(column)
    for folder in folders:
        try:
            check_storage_url(Manifest.read(folder).storage)  # a manifest may name anything
            handle = open_study_folder(str(folder))
        except UsageError as error:
            table.add_row(folder.name, f"unreadable: {error}", "", "", "", "", "", str(folder))
            continue
        counts = trial_counts(handle.study)
        status = "running" if DriverLock.is_held(folder) else "idle"
        table.add_row(handle.manifest.name, status, str(counts["complete"]), str(counts["failed"]),
                      str(counts["infeasible"]), str(counts["waiting"]), str(len(pareto_front(handle.study))),
                      str(folder))
    Console(width=200).print(table)
    return 0
