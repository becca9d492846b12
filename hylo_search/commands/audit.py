"""``hylo-search audit NAME|PATH``: do the cheap scores rank layouts as promotion does?"""

from __future__ import annotations

import argparse
from typing import Any

from ._study_args import add_study_arguments, with_executor


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit", help="check that the cheap scores rank layouts as promoted (fully trained) layouts do",
        description="Promote --layouts layouts of the study other than the teacher (its completed trials spread "
        "over their ranking, then feasible layouts of its space) with the study's promotion recipe, judge them on "
        "held-out text and probe prompts the search never saw, and report Spearman and Kendall rank correlations "
        "with bootstrap 95%% intervals and the top-k regret of each cheap score (each tier's proxy, the library's "
        "additive sensitivity score). Writes <folder>/audit.json; `pareto` and `study` then warn about scores whose "
        "Spearman lower bound is below 0.5 or that are undefined (ties).",
    )
    add_study_arguments(parser, storage_help="storage URL if not the one the study folder records")
    parser.add_argument("--layouts", type=int, default=12, help="layouts to promote (default 12, at least 3)")
    parser.add_argument("--recipe", default=None, help="promotion recipe (default: the study's promotion.recipe)")
    parser.add_argument("--budget-multiplier", type=float, default=None,
                        help="scale the promotion recipe's tokens by this (default: its own budget)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..results.audit import format_audit, run_audit

    console = Console(highlight=False, soft_wrap=True)

    def report(event: str, info: dict[str, Any]) -> None:
        if event == "audit_started":
            promoted = info["promoted"]
            console.print(f"audit of {args.study}: {info['layouts']} layouts, {info['runs']} runs (promotion "
                          f"recipe {promoted['recipe']} at {promoted['tokens']:,} tokens, seed {info['seed']})",
                          markup=False)
        elif event == "audit_run":
            record = info["record"]
            shown = record.get("failure") or ", ".join(f"{k}={v:.4g}" for k, v in sorted(record["metrics"].items()))
            console.print(f"  {info['layout']:<24} {info['tier']:<10} {shown}", markup=False)

    folder, result = with_executor(args, lambda loaded, folder, executor, threads, _: run_audit(
        loaded, folder, executor, args.layouts, args.recipe, args.budget_multiplier, args.storage, threads, report))
    console.print(format_audit(result), markup=False)
    console.print(f"written to {folder / 'audit.json'}", markup=False)
    failed = sum(1 for row in result["layouts"] if "promoted" in row["failures"])
    return 1 if failed == len(result["layouts"]) else 0
