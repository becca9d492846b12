"""``hylo-search promote STUDY --trial N --recipe RECIPE --out DIR``: train a study trial's layout for real.

The layout comes from ``hylo_search.results.export_layout(study, trial)`` (the same file ``hylo-search export``
writes), or from ``--layout-file`` (such a file, with ``teacher:`` beside ``layout:``). Training is exactly
``hylo-search train``; where the layout came from is recorded in the run's run.json. The recipe defaults to the
study's ``promotion.recipe``.

Then the promotion gate (:mod:`hylo_search.results.gate`) probes the final model on fresh prompts and compares it
with the trial's promise: both figures are printed and recorded in run.json (``promotion_gate``). Falling short by
more than 2 standard errors warns, or with ``--gate fail`` (or the study's ``promotion.gate: fail``) exits 1: the
inputs were valid and the trained model is kept, but it did not keep the promise (bad input exits 2, before any
training).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .train import add_training_arguments, execute


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "promote", help="train the layout of a study trial with a full recipe",
        description="Take the exported layout of a study trial (or a layout file) and train it through a recipe, "
        "as `hylo-search train` does.",
    )
    parser.add_argument("study", nargs="?", default=None, help="study name or path (with --trial)")
    parser.add_argument("--trial", type=int, default=None, help="trial number in the study")
    parser.add_argument("--layout-file", default=None,
                        help="a layout file from `hylo-search export` (instead of STUDY --trial)")
    parser.add_argument("--teacher", default=None, help="teacher directory or hub id (default: the layout file's)")
    parser.add_argument("--gate", choices=["warn", "fail"], default=None,
                        help="when the promoted model falls short of the trial's promise by more than 2 standard "
                        "errors: warn, or fail with exit code 1 (default: the study's promotion.gate, warn)")
    add_training_arguments(parser, recipe_help="recipe YAML file or shipped recipe name (default: the study's "
                           "promotion.recipe)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from ..define.layout_files import read_layout
    from ..errors import UsageError

    if args.layout_file and (args.study or args.trial is not None):
        raise UsageError("give either STUDY --trial N or --layout-file FILE, not both")
    if args.layout_file:
        path = Path(args.layout_file)
        if not os.path.isfile(path):  # never raises, unlike Path.is_file on an over-long name
            raise UsageError(f"--layout-file {path}: no such file")
        origin = {"layout_file": str(path.resolve())}
    else:
        if args.study is None or args.trial is None:
            raise UsageError("give STUDY --trial N, or --layout-file FILE")
        from ..results.trial import export_layout

        try:
            path = Path(export_layout(args.study, args.trial))
        except (KeyError, LookupError, ValueError, OSError) as error:
            raise UsageError(f"study {args.study!r} trial {args.trial}: {error}") from None
        origin = {"study": str(args.study), "trial": args.trial, "layout_file": str(path)}
    layout = read_layout(path)
    data = yaml.safe_load(path.read_text())
    data = data if isinstance(data, dict) else {}
    upcycle = data.get("upcycle") or {}
    if not isinstance(upcycle, dict):
        raise UsageError(f"{path}: field 'upcycle' must be a mapping of upcycling options")
    teacher = args.teacher
    if teacher is None:
        teacher = data.get("teacher")
        if not teacher:
            raise UsageError(f"{path}: no 'teacher' field; pass --teacher DIR_OR_HUB_ID")
        # A relative teacher path is relative to the layout file.
        relative = path.parent / str(teacher)
        teacher = str(relative) if not Path(str(teacher)).is_absolute() and relative.is_dir() else str(teacher)
    origin["layout"] = str(layout)
    from ..results.gate import read_spec

    spec = read_spec(data, path, args.gate)
    if args.recipe is None:
        args.recipe = (data.get("promotion") or {}).get("recipe")
        if not args.recipe:
            raise UsageError(f"{path}: field 'promotion.recipe': the study names no promotion recipe; pass --recipe "
                             "NAME_OR_FILE")
    # The trial's own upcycling options (recorded by `export`) win over the recipe's, so the promoted student starts
    # exactly as the searched one did.
    return execute(teacher, layout, args, origin=origin, student_options=upcycle,
                   on_done=lambda result: _gate(result, spec, str(layout).split(","), args, path))


def _gate(result, spec, tokens: list[str], args: argparse.Namespace, path: Path) -> int:
    """Probe the promoted model against the promise; the exit code (1: it fell short under ``fail``)."""
    if spec is None:
        print(f"promotion gate: not run ({path} carries no promise; `hylo-search export` writes one)")
        return 0
    from transformers import AutoTokenizer

    from ..results.gate import run_gate

    source = args.tokenizer or Path(args.out) / "final"
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), trust_remote_code=False)
    except (OSError, ValueError):
        print(f"promotion gate: not run (no tokenizer in {source}; pass --tokenizer)")
        return 0
    verdict, text = run_gate(result.model.eval(), tokenizer, spec, tokens, Path(args.out))
    print(text)
    return 1 if verdict == "short" and spec.settings.gate == "fail" else 0
