"""``hylo-search train --teacher T --layout L --recipe RECIPE --out DIR``: distil any layout through a recipe.

Runs on one CPU/GPU as is, on several GPUs under ``accelerate launch -m hylo_search.cli train ...``, on several CPU
processes (gloo) under ``torchrun --nproc_per_node 2 -m hylo_search.cli train ...`` (``accelerate launch --cpu``
needs MPI for that). Rerunning the same command after an interruption resumes from the newest checkpoint in DIR.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable


def add_training_arguments(parser: argparse.ArgumentParser, recipe_help: str | None = None) -> None:
    """Arguments ``train`` and ``promote`` share; ``recipe_help`` makes ``--recipe`` optional (promote: the study
    names one)."""
    parser.add_argument("--recipe", required=recipe_help is None,
                        help=recipe_help or "recipe YAML file, or the name of a shipped recipe under studies/recipes/ "
                        "(e.g. tiny)")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, metrics, final model)")
    parser.add_argument("--data", action="append", default=None, metavar="PATH",
                        help="data file, folder or glob replacing the recipe's data (repeat for several)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the teacher's)")
    parser.add_argument("--progress", default="auto", choices=["auto", "bar", "lines", "off"],
                        help="progress display (auto: a bar on a terminal, lines otherwise)")
    parser.add_argument("--log-with", default="auto", metavar="TRACKERS",
                        help="experiment trackers (accelerate's): auto (TensorBoard under OUT/tracking/ when "
                        "tensorboard or tensorboardX is installed), none, or names such as tensorboard, wandb, "
                        "mlflow (comma-separated)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="distil a HyLo student of any layout from its teacher through a recipe",
        description="Upcycle the teacher into LAYOUT (or load an upcycled student) and train it through the "
        "recipe's stages (align -> distill -> long). Rerun the same command to resume after an interruption; use "
        "`accelerate launch -m hylo_search.cli train ...` for several GPUs.",
    )
    parser.add_argument("--teacher", required=True, help="teacher directory or hub id (Llama/Qwen2/Qwen3)")
    parser.add_argument("--layout", required=True,
                        help='layout code ("A,L128,M,G,..."), a layout YAML file, or an upcycled HyLo folder')
    add_training_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return execute(args.teacher, args.layout, args)


def resolve_layout(layout: str, num_layers: int) -> Any:
    """A layout code, a layout file, or an upcycled HyLo folder (returned as its path) -> what run_recipe takes."""
    from hylo_model import Layout

    from ..define.layout_files import read_layout
    from ..errors import UsageError

    path = Path(layout)
    # os.path, unlike Path, never raises on a layout code longer than a file name may be.
    if os.path.isdir(path):
        if not (path / "config.json").exists():
            raise UsageError(f"--layout {layout}: a folder must be an upcycled HyLo model (no config.json)")
        return str(path)
    try:
        parsed = read_layout(path) if os.path.isfile(path) else Layout.parse(layout, num_layers)
        parsed.check_length(num_layers)
    except ValueError as error:
        raise UsageError(f"--layout: {error}") from None
    return parsed


def execute(teacher: str, layout: Any, args: argparse.Namespace, *, origin: dict[str, Any] | None = None,
            student_options: dict[str, Any] | None = None, on_done: Callable[[Any], int] | None = None) -> int:
    """Check every input (nothing is written on bad input: exit 2), then train. ``origin`` (e.g. the study and
    trial a layout was promoted from) is recorded in the run's run.json; ``student_options`` override the recipe's
    upcycling options; ``on_done(result)`` runs on the main process after training and gives the exit code (the
    promotion gate). Returns the exit code."""
    from hylo_model.train import DataError, NonFiniteLossError, RecipeError, RunMismatchError, load_recipe, run_recipe
    from hylo_model.train.trainer import trackers

    from ..define.teachers import check_teacher_weights
    from ..errors import UsageError
    from ._inputs import check_recipe_data
    from ._outputs import output_folder

    # A rerun resumes in its own run folder (run.json); a file or a folder of the user's is refused here.
    output_folder(args.out, "--out", lambda folder: (folder / "run.json").is_file(), "training run")
    try:
        log_with = trackers(args.log_with)
    except ValueError as error:
        raise UsageError(f"--log-with: {str(error).split(': ', 1)[-1]}") from None
    try:
        recipe = load_recipe(args.recipe)
        if args.data:
            recipe = recipe.with_data([str(Path(p).resolve()) for p in args.data])
    except RecipeError as error:
        raise UsageError(str(error)) from None
    check_recipe_data(recipe, bool(args.data))
    if student_options:
        try:
            recipe = recipe.with_student(**student_options)
        except RecipeError as error:
            where = (origin or {}).get("layout_file", "layout file")
            raise UsageError(f"{where}: field 'upcycle': {str(error).split(': ', 1)[-1]}") from None
    try:
        teacher_dir = _teacher_dir(teacher)
        from transformers import AutoConfig

        num_layers = AutoConfig.from_pretrained(teacher_dir, trust_remote_code=False).num_hidden_layers
        check_teacher_weights(str(teacher_dir))
    except (OSError, ValueError, RuntimeError, KeyError) as error:
        raise UsageError(f"--teacher {teacher}: {error}") from None
    if isinstance(layout, str):
        student = resolve_layout(layout, num_layers)
    else:
        try:
            layout.check_length(num_layers)
        except ValueError as error:
            raise UsageError(f"layout: {error}") from None
        student = layout
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=False)
        except (OSError, ValueError) as error:
            raise UsageError(f"--tokenizer {args.tokenizer}: {error}") from None
    try:
        # Hub ids and folders are passed as given (run.json names them); built-ins as the folder they were built in.
        source = str(teacher_dir) if teacher.startswith("builtin:") else teacher
        result = run_recipe(source, student, recipe, args.out, tokenizer=tokenizer, progress=args.progress,
                            metadata=origin, log_with=log_with)
    except (RecipeError, DataError, RunMismatchError) as error:
        raise UsageError(str(error)) from None
    except NonFiniteLossError as error:
        print(f"hylo-search: {error}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(_table(result))
    print(f"final model: {Path(args.out) / 'final'}")
    return on_done(result) if on_done is not None else 0


def _teacher_dir(teacher: str) -> Path:
    """A local teacher folder: a directory, a hub id (fetched), or a search built-in (``builtin:tiny``, built by
    :mod:`hylo_search.define.teachers` into this user's cache folder)."""
    if teacher.startswith("builtin:"):
        from ..define.teachers import teacher_directory

        return teacher_directory(teacher)
    from hylo_model.upcycle.source import resolve_local_dir

    return resolve_local_dir(teacher)


def _table(result: Any) -> str:
    def kl(ev: dict[str, Any]) -> str:
        return f"{ev['kl']:.4f}" if ev.get("kl") is not None else "-"

    lines = [f"{'stage':<14}{'kind':<9}{'steps':>7}{'tokens':>12}{'held-out KL':>22}{'seconds':>10}"]
    for s in result.stages:
        lines.append(f"{s.name:<14}{s.kind:<9}{s.steps:>7}{s.tokens:>12}"
                     f"{kl(s.eval_before) + ' -> ' + kl(s.eval_after):>22}{s.seconds:>10.1f}")
    return "\n".join(lines)
