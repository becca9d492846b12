"""``hylo-search export NAME --trial N``: a trial's layout as a file promote / train / upcycle read directly."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="write a trial's layout file (for promote / train / upcycle)",
        description="Write the layout of completed trial N of study NAME as YAML (layout, teacher, upcycle "
        "options, the trial's objectives). Default: <study folder>/exports/trial_<N>.yaml.",
    )
    parser.add_argument("name", metavar="NAME", help="study name or folder")
    parser.add_argument("--trial", type=int, required=True, help="trial number (see `hylo-search pareto`)")
    parser.add_argument("--out", default=None, help="output file, new or an earlier export (default <study "
                        "folder>/exports/trial_N.yaml)")
    parser.add_argument("--storage", default=None, help="storage URL if not the one the study folder records")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from .. import paths
    from ..results.trial import export_layout
    from ._outputs import output_file
    from ._reports import open_reported

    if args.out is not None:
        # Checked before the storage is opened: an earlier export may be replaced, nothing else of the user's.
        output_file(args.out, "--out", _is_export, "layout file")
    handle = open_reported(args.name, args.storage, sys.stdout)
    if args.out is None:
        output_file(paths.export_path(handle.folder, args.trial), "export", _is_export, "layout file")
    path = export_layout(handle, args.trial, args.out)
    print(f"wrote {path}")
    print(f"  hylo-search upcycle TEACHER --layout {path} --out DIR    (or promote / train with --layout {path})")
    return 0


def _is_export(path: Path) -> bool:
    """Whether ``path`` is a layout file ``export`` wrote (small, and a mapping with its fields)."""
    import yaml

    try:
        if path.stat().st_size > 1 << 20:
            return False
        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and {"layout", "study", "trial", "hylo_version"} <= set(data)
