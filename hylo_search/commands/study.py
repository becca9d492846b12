"""``hylo-search study NAME|PATH``: run (or resume) a layout search; ``--dry-run`` only describes it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ._study_args import add_study_arguments


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study", help="run or resume a multi-objective layout search",
        description="Run the study NAME (a shipped studies/NAME.yaml) or PATH (a study YAML) until it holds "
        "--trials trials (completed or failed; infeasible and duplicate proposals do not count). Rerunning the "
        "same command resumes it. Output: ./hylo_runs/<name>/ ($HYLO_RUNS_DIR, or --out).",
    )
    add_study_arguments(parser, storage_help="Optuna storage URL (default sqlite under the study folder)")
    parser.add_argument("--trials", type=int, default=None, help="trials the study should hold (default: the YAML's)")
    parser.add_argument("--dry-run", action="store_true", help="describe the space, baselines and costs; run nothing")
    parser.add_argument("--track", action="append", choices=["mlflow", "wandb"], default=[],
                        help="also log every trial as a run of MLflow ($MLFLOW_TRACKING_URI) or W&B ($WANDB_PROJECT); "
                        "pip install 'hylo-search[mlflow]' or '[wandb]'; repeatable")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import warnings

    import optuna

    from ..errors import UsageError
    from ..study import load_study

    # The driver reports every trial itself; Optuna's per-trial log lines and "experimental" notes are noise here.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    loaded = load_study(args.study, seed=args.seed)
    from ..search.run import options_for

    try:
        options = options_for(loaded, args.trials, args.executor, args.address, args.storage, args.out)
    except UsageError as error:
        if args.storage or not loaded.definition.storage.url:
            raise
        raise UsageError(f"{loaded.source}: field 'storage.url': {error}") from None
    if args.dry_run:
        from ..results.dry_run import dry_run_report

        print(dry_run_report(loaded, options))
        return 0
    from ..study import check_inputs
    from ._outputs import is_study_folder, output_folder, storage_location

    # Everything a trial reads, and where the study writes, is checked before the study folder is made.
    check_inputs(loaded)
    output_folder(options.folder, "--out" if args.out else "study folder", is_study_folder, "study")
    storage_location(options.storage, "--storage" if args.storage else "storage")
    from ..search.run import run_study
    from ..search.tracking import tracking_callbacks

    options.callbacks = tracking_callbacks(args.track, loaded.metrics)
    progress = _Progress(options.trials, loaded.metrics)
    try:
        summary = progress.run(lambda report: run_study(loaded, options, reporter=report))
    except RuntimeError as error:
        print(f"hylo-search study: error: {error}", file=sys.stderr)
        return 1
    counts = summary.counts
    print(f"{loaded.name}: {summary.stop_reason}; {counts['complete']} completed, {counts['failed']} failed, "
          f"{counts['infeasible']} infeasible, {counts['duplicate']} duplicate proposals")
    print(f"front: trials {', '.join(map(str, summary.front)) or 'none yet'}")
    if summary.front:
        pick = _print_front(summary, _ref(args, loaded))  # the front table ends with the audit's warnings
    else:
        from ..results.front import audit_warnings

        pick = None
        for warning in audit_warnings(summary.folder):
            print(f"warning: {warning}")
    print(f"  table: {summary.folder / 'trials.parquet'}    hylo-search pareto {_ref(args, loaded)}")
    if pick is not None:
        print(f"  hylo-search export {_ref(args, loaded)} --trial {pick}")
    return 0 if counts["complete"] or not counts["failed"] else 1


def _print_front(summary: Any, ref: str) -> int:
    """Print the front as a table, and plot it beside the study (PNG with matplotlib, HTML with plotly, whichever
    are installed). Returns the trial to suggest exporting: the front's best hybrid (not the teacher itself) by the
    first objective."""
    from ..results.front import format_front, front_report, plot_front
    from ..search.storage import open_study_folder

    handle = open_study_folder(str(summary.folder), None)
    report = front_report(handle)
    print(format_front(report, "table"))
    written = []
    plottable = 2 <= len(report["objectives"]) <= 3
    for name in ("front.png", "front.html") if plottable else ():  # a picture to glance at; the interactive one
        try:
            written.append(str(plot_front(handle, summary.folder / name)))
        except RuntimeError:  # matplotlib or plotly not installed
            continue
    if written:
        print(f"  plot: {'  '.join(written)}")
    elif plottable:
        print(f"  plot: pip install 'hylo-search[dashboard]', then hylo-search pareto {ref} --plot front.png")
    first = report["objectives"][0]
    sign = 1 if first["direction"] == "minimize" else -1
    rows = [r for r in report["front"] if r.get("baseline") != "teacher"] or report["front"]
    return min(rows, key=lambda r: sign * float(r.get(first["metric"]) or 0.0))["trial"]


def _ref(args: argparse.Namespace, loaded: Any) -> str:
    return args.out if args.out else loaded.name


class _Progress:
    """One line per finished trial, printed as is (markup off: a ``[baseline NAME]`` tag or a failure's bracketed
    text stays), with an ETA once a trial of this run has finished; on a terminal, also a live bar."""

    def __init__(self, target: int, metrics: list[str]) -> None:
        from rich.console import Console

        from ._progress import Eta, LibraryLines

        self.console = Console(highlight=False, soft_wrap=True)
        self.target = target
        self.metrics = metrics
        self.eta = Eta(target)
        self.replicates_eta = Eta(0)  # the finalists' replicates, paced from the end of the search
        self.library = LibraryLines(self.console)
        self.update: Any = lambda **fields: None

    def run(self, body: Any) -> Any:
        from ._progress import live_bar

        with live_bar(self.console, "trials", self.target) as update:
            self.update = update
            return body(self.report)

    def report(self, event: str, info: dict[str, Any]) -> None:
        from ._progress import say

        if self.library.report(event, info):
            return
        if event == "started":
            counts = info["counts"]
            # The pace counts this run's trials only (after the library is built, when the study uses one).
            self.eta.restart(counts["counted"])
            self.replicates_eta.restart(counts.get("replicated", 0))
            resumed = f", resuming with {counts['counted']} trials" if counts["counted"] else ""
            say(self.console, f"study folder {info['folder']} (storage {info['storage']}); "
                f"{info['capacity']} trial(s) at a time{resumed}")
            self._status(counts)
            return
        if event == "trial":
            say(self.console, self.line(info["trial"], info["counts"]))
            self._status(info["counts"])

    def line(self, trial: Any, counts: dict[str, int]) -> str:
        """``trial N STATUS LAYOUT  metric=value ...  (why)  [baseline NAME]   | counts  eta``."""
        attrs = trial.user_attrs
        status = "duplicate" if "duplicate_of" in attrs else "infeasible" if "infeasible" in attrs else \
            trial.state.name.lower()
        line = f"trial {trial.number:>4} {status:<10} {attrs.get('layout', '')}"
        if "promoted_from" in attrs:
            line += f"  [{attrs['tier']} of trial {attrs['promoted_from']}]"
        if "replicate_of" in attrs:
            seeds = len((attrs.get("replicates") or {}).get("seeds") or [])
            line += f"  [replicate{f' over {seeds} seeds' if seeds else ''} of trial {attrs['replicate_of']}]"
        if trial.values:
            line += "  " + "  ".join(f"{m}={v:.4g}" for m, v in zip(self.metrics, trial.values))
        for why in ("failure", "infeasible"):
            if attrs.get(why):
                line += f"  ({attrs[why]})"
        if "duplicate_of" in attrs:
            line += f"  (same layout as trial {attrs['duplicate_of']})"
        if attrs.get("baseline"):
            line += f"  [baseline {attrs['baseline']}]"
        line += (f"   | done {counts['complete']}  running {counts['running']}  failed {counts['failed']}  "
                 f"infeasible {counts['infeasible']}  front {counts['front']}")
        if "replicate_of" in attrs:
            self.replicates_eta.total = counts.get("replicated", 0) + counts.get("finalists_left", 0)
            eta = self.replicates_eta.text(counts.get("replicated", 0))
        else:
            self.replicates_eta.restart(counts.get("replicated", 0))
            eta = self.eta.text(counts["counted"])
        return line + (f"  {eta}" if eta else "")

    def _status(self, counts: dict[str, int]) -> None:
        self.update(completed=counts["counted"], status=f"done {counts['complete']} running "
                    f"{counts.get('running', 0)} failed {counts['failed']} front {counts.get('front', 0)}")
