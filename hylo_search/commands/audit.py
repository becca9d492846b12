"""``hylo-search audit NAME|PATH``: rank correlation of each cheap objective with a longer proxy."""

from __future__ import annotations

import argparse
from typing import Any

from ._study_args import add_study_arguments, with_executor


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "audit", help="check that the cheap objectives rank layouts as a longer proxy does",
        description="Retrain --layouts layouts of the study (its completed trials spread over their ranking, then "
        "feasible layouts of its space) with the proxy recipe at --budget-multiplier times its tokens, and report "
        "Spearman and Kendall rank correlations between each cheap objective (each tier's proxy, the library's "
        "additive sensitivity score) and the longer run. Writes <folder>/audit.json; `pareto` and `study` then warn "
        "about objectives whose Spearman correlation is below 0.5.",
    )
    add_study_arguments(parser, storage_help="storage URL if not the one the study folder records")
    parser.add_argument("--layouts", type=int, default=8, help="layouts to retrain (default 8, at least 3)")
    parser.add_argument("--budget-multiplier", type=float, default=10.0,
                        help="the longer proxy's tokens as a multiple of the proxy recipe's (default 10)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..results.audit import format_audit, run_audit

    console = Console(highlight=False, soft_wrap=True)

    def report(event: str, info: dict[str, Any]) -> None:
        if event == "audit_started":
            console.print(f"audit of {args.study}: {info['layouts']} layouts, {info['runs']} runs "
                          f"(longer proxy {info['long']['recipe']} at {info['long']['tokens']:,} tokens)")
        elif event == "audit_run":
            record = info["record"]
            shown = record.get("failure") or ", ".join(f"{k}={v:.4g}" for k, v in sorted(record["metrics"].items()))
            console.print(f"  {info['layout']:<24} {info['tier']:<10} {shown}")

    folder, result = with_executor(args, lambda loaded, folder, executor, threads, _: run_audit(
        loaded, folder, executor, args.layouts, args.budget_multiplier, args.storage, threads, report))
    console.print(format_audit(result))
    console.print(f"written to {folder / 'audit.json'}")
    failed = sum(1 for row in result["layouts"] if "long" in row["failures"])
    return 1 if failed == len(result["layouts"]) else 0
