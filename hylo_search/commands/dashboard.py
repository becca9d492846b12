"""``hylo-search dashboard NAME``: optuna-dashboard on the study's storage (optional dependency)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dashboard", help="open optuna-dashboard on a study's storage",
                                   description="Serve optuna-dashboard for study NAME's storage "
                                   "(pip install 'hylo-search[dashboard]').")
    parser.add_argument("name", metavar="NAME", help="study name or folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..search.storage import Manifest, check_storage_url, find_study_folder, make_storage

    manifest = Manifest.read(find_study_folder(args.name))
    check_storage_url(manifest.storage)
    try:
        from optuna_dashboard import run_server
    except ImportError:
        print("hylo-search dashboard: error: optuna-dashboard is not installed; "
              "pip install 'hylo-search[dashboard]' (or: pip install optuna-dashboard)", file=sys.stderr)
        return 1
    print(f"optuna-dashboard for {manifest.name} on http://{args.host}:{args.port} (storage {manifest.storage})")
    run_server(make_storage(manifest.storage), host=args.host, port=args.port)
    return 0
