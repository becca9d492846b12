"""Reading a study back: trial counts, the Parquet table, the Pareto front, plots, one trial, layout export.

Nothing here imports torch, so ``pareto``, ``show`` and ``list`` answer quickly; :func:`export_layout` imports
:mod:`hylo_model` only when called.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from .errors import UsageError

if TYPE_CHECKING:
    import optuna

    from .runs import RunHandle

INTERRUPTED_ATTR = "hylo:interrupted"
AUDIT = "audit.json"  # written by hylo_search.audit
AUDIT_THRESHOLD = 0.5  # a cheap objective whose Spearman correlation with the longer proxy is below this is flagged


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """``complete``, ``failed`` (a failure of the trial itself), ``interrupted`` (its driver died; retried),
    ``infeasible``, ``duplicate``, ``waiting``, ``running``, ``counted`` (= complete + failed) and ``promoted``
    (the counted trials that are second-tier results of a two-tier study)."""
    counts = dict.fromkeys(("complete", "failed", "interrupted", "infeasible", "duplicate", "waiting", "running",
                            "promoted"), 0)
    for t in study.get_trials(deepcopy=False):
        if "promoted_from" in t.user_attrs:
            counts["promoted"] += 1
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif t.state == TrialState.FAIL:
            counts["failed" if "failure" in t.user_attrs else "interrupted"] += 1
        elif t.state == TrialState.PRUNED:
            counts["duplicate" if "duplicate_of" in t.user_attrs else "infeasible"] += 1
        elif t.state == TrialState.WAITING:
            counts["waiting"] += 1
        else:
            counts["running"] += 1
    counts["counted"] = counts["complete"] + counts["failed"]
    return counts


def status_of(t: FrozenTrial) -> str:
    if t.state == TrialState.PRUNED:
        return "duplicate" if "duplicate_of" in t.user_attrs else "infeasible"
    if t.state == TrialState.FAIL and "failure" not in t.user_attrs:
        return "interrupted"
    return t.state.name.lower()


def trial_row(t: FrozenTrial, metrics: list[str]) -> dict[str, Any]:
    """One flat record per trial (what ``trials.parquet`` holds); nested tables are JSON strings."""
    attrs = t.user_attrs
    memory, run, result = attrs.get("memory", {}), attrs.get("run", {}), attrs.get("result", {})
    values = dict(zip(metrics, t.values)) if t.values else {}
    tokens = attrs["layout"].split(",") if attrs.get("layout") else []
    row: dict[str, Any] = {
        "number": t.number, "status": status_of(t), "layout": attrs.get("layout"),
        "layers": [token[0] for token in tokens] or None,
        "ranks": [int(token[1:]) if token[1:] else None for token in tokens] or None,
        "baseline": attrs.get("baseline"), "tier": attrs.get("tier"), "promoted_from": attrs.get("promoted_from"),
        "source": attrs.get("source"), "feasible": run.get("feasible"), "infeasible": attrs.get("infeasible"),
        "duplicate_of": attrs.get("duplicate_of"),
        "failure": attrs.get("failure") or t.system_attrs.get(INTERRUPTED_ATTR),
        "retry_of": t.system_attrs.get("failed_trial"), "proposed_layout": run.get("proposed_layout"),
    }
    for metric in metrics:
        row[metric] = values.get(metric, memory.get(metric))
    for key in ("cache_bytes", "cache_ratio", "params", "params_ratio"):
        row.setdefault(key, memory.get(key))
    for key, value in sorted(t.constraints.items()):
        row[f"constraint:{key}"] = value
    for key, value in (attrs.get("metrics") or {}).items():
        row.setdefault(key, value)
    for key, value in (result.get("timings") or {}).items():
        row[f"time:{key}"] = value
    row.update(
        losses=json.dumps(attrs.get("losses")), layer_table=json.dumps(attrs.get("layer_table")),
        probe_table=json.dumps(attrs.get("probe_table")), details=json.dumps(result.get("details")),
        node=result.get("node"), host=result.get("host"), seed=run.get("seed"), hylo_version=run.get("hylo_version"),
        duration_s=(t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start else None,
        datetime_start=t.datetime_start.isoformat() if t.datetime_start else None,
        datetime_complete=t.datetime_complete.isoformat() if t.datetime_complete else None,
    )
    return row


def trials_frame(study: optuna.Study, metrics: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame([trial_row(t, metrics) for t in study.get_trials(deepcopy=False)])


def write_trials_table(study: optuna.Study, path: Path, metrics: list[str]) -> Path:
    """Rewrite the Parquet table from the storage (the source of truth): temp file, then rename."""
    frame = trials_frame(study, metrics)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------------ the front
def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible non-dominated trials (Optuna's ``best_trials``, which keeps feasible trials only when the
    study has constraints), by trial number. In a two-tier study holding second-tier results, the front of those
    only (a first-tier number is not comparable with a trained one)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    promoted = [t for t in complete if "promoted_from" in t.user_attrs]
    if not promoted:
        return sorted((t for t in study.best_trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
    from optuna.study._multi_objective import _get_pareto_front_trials_by_trials  # best_trials over given trials

    return sorted(_get_pareto_front_trials_by_trials(promoted, study.directions, consider_constraint=True),
                  key=lambda t: t.number)


def ranked_trials(trials: list[FrozenTrial], directions: list[Any]) -> list[FrozenTrial]:
    """Completed trials best first: by non-domination rank (successive Pareto fronts, Optuna's fast
    non-dominated sort as NSGA-II uses it), then by the first objective, then by number."""
    import numpy as np
    from optuna.study import StudyDirection
    from optuna.study._multi_objective import _fast_non_domination_rank

    if not trials:
        return []
    sign = np.array([1.0 if d in (StudyDirection.MINIMIZE, "minimize") else -1.0 for d in directions])
    loss = np.array([t.values for t in trials], dtype=float) * sign
    ranks = _fast_non_domination_rank(loss)
    order = sorted(range(len(trials)), key=lambda k: (ranks[k], loss[k, 0], trials[k].number))
    return [trials[k] for k in order]


def summary_row(t: FrozenTrial, metrics: list[str]) -> dict[str, Any]:
    attrs = t.user_attrs
    return {
        "trial": t.number, "layout": attrs.get("layout"), "baseline": attrs.get("baseline"), "tier": attrs.get("tier"),
        **{m: v for m, v in zip(metrics, t.values or [None] * len(metrics))},
        "cache_ratio": (attrs.get("memory") or {}).get("cache_ratio"),
        "params_ratio": (attrs.get("memory") or {}).get("params_ratio"),
    }


def front_report(handle: RunHandle) -> dict[str, Any]:
    """The front and every baseline's standing (on the front, dominated, infeasible, failed, pending; in a
    two-tier study whose front is second-tier, a first-tier trial stands as "first tier"), and the fidelity
    audit's warnings."""
    metrics = handle.metrics
    front = pareto_front(handle.study)
    on_front = {t.number for t in front}
    second = any("promoted_from" in t.user_attrs for t in front)
    baselines = []
    for t in handle.study.get_trials(deepcopy=False):
        if "baseline" in t.user_attrs and t.state != TrialState.WAITING:
            standing = "front" if t.number in on_front else \
                "first tier" if second and "promoted_from" not in t.user_attrs and t.state == TrialState.COMPLETE \
                else "dominated" if t.state == TrialState.COMPLETE else status_of(t)
            baselines.append({**summary_row(t, metrics), "standing": standing})
    return {"study": handle.manifest.name, "objectives": handle.manifest.objectives,
            "front": [summary_row(t, metrics) for t in front], "baselines": baselines,
            "warnings": audit_warnings(handle.folder)}


def audit_warnings(folder: Path) -> list[str]:
    """Warnings from the study folder's fidelity audit (``hylo-search audit``), if it has one."""
    try:
        return audit_warnings_of(json.loads((Path(folder) / AUDIT).read_text()))
    except (OSError, ValueError, KeyError):
        return []


def audit_warnings_of(audit: dict[str, Any]) -> list[str]:
    """One line per cheap objective whose Spearman rank correlation with the longer proxy is below the
    threshold (or could not be computed)."""
    threshold = audit.get("threshold", AUDIT_THRESHOLD)
    lines = []
    for row in audit["correlations"]:
        rho = row.get("spearman")
        if rho is None or rho < threshold:
            shown = "undefined" if rho is None else f"{rho:.2f}"
            tau = "" if row.get("kendall") is None else f", Kendall {row['kendall']:.2f}"
            lines.append(f"objective {row['objective']} ranks layouts unlike the {audit['budget_multiplier']:g}x "
                         f"longer proxy (Spearman {shown}{tau} on {row['n']} layouts; below {threshold:g}): "
                         "do not trust its ranking alone")
    return lines


def format_front(report: dict[str, Any], fmt: str) -> str:
    metrics = [o["metric"] for o in report["objectives"]]
    if fmt == "json":
        return json.dumps(report, indent=2)
    if fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        fields = ["trial", "layout", "baseline", *metrics, "cache_ratio", "params_ratio"]
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(report["front"])
        return buffer.getvalue().rstrip("\n")
    return _front_table(report, metrics)


def _front_table(report: dict[str, Any], metrics: list[str]) -> str:
    from rich.console import Console
    from rich.table import Table

    directions = {o["metric"]: "↓" if o["direction"] == "minimize" else "↑" for o in report["objectives"]}
    table = Table(title=f"Pareto front of {report['study']} ({len(report['front'])} trials; * = baseline)")
    for name in ["trial", "layout", *[f"{m} {directions[m]}" for m in metrics], "cache×teacher"]:
        table.add_column(name, overflow="fold")
    for row in report["front"]:
        table.add_row(f"{row['trial']}{'*' if row['baseline'] else ''}", row["layout"],
                      *[_fmt(row[m]) for m in metrics], _fmt(row["cache_ratio"]))
    console = Console(width=160, record=True, file=open(os.devnull, "w"))
    console.print(table)
    if report["baselines"]:
        console.print("baselines: " + "; ".join(f"{b['baseline']} (trial {b['trial']}): {b['standing']}"
                                                for b in report["baselines"]))
    for warning in report.get("warnings", []):
        console.print(f"warning: {warning}")
    return console.export_text().rstrip("\n")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def plot_front(handle: RunHandle, path: Path) -> Path:
    """Optuna's Pareto-front plot (plotly for .html, matplotlib for .png) with the baselines marked."""
    import optuna

    metrics = handle.metrics
    if not 2 <= len(metrics) <= 3:
        raise UsageError(f"--plot needs 2 or 3 objectives; this study has {len(metrics)}")
    report = front_report(handle)
    marks = [b for b in report["baselines"] if all(b.get(m) is not None for m in metrics)]
    if path.suffix == ".html":
        try:
            import plotly.graph_objects as go
        except ImportError:
            raise RuntimeError("--plot FILE.html needs plotly: pip install 'hylo-search[dashboard]'") from None
        figure = optuna.visualization.plot_pareto_front(handle.study, target_names=metrics)
        trace = go.Scatter3d if len(metrics) == 3 else go.Scatter
        coords = dict(zip("xyz", ([b[m] for b in marks] for m in metrics)))
        figure.add_trace(trace(**coords, mode="markers+text", name="baselines", text=[b["baseline"] for b in marks],
                               marker=dict(symbol="diamond", size=10, color="black")))
        figure.write_html(str(path))
        return path
    if path.suffix == ".png":
        try:
            import matplotlib

            matplotlib.use("Agg")
        except ImportError:
            raise RuntimeError("--plot FILE.png needs matplotlib: pip install matplotlib") from None
        with warnings.catch_warnings():  # Optuna marks its matplotlib backend experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            axes = optuna.visualization.matplotlib.plot_pareto_front(handle.study, target_names=metrics)
        if len(metrics) == 2:
            axes.scatter([b[metrics[0]] for b in marks], [b[metrics[1]] for b in marks], marker="D", c="black",
                         label="baselines")
            for b in marks:
                axes.annotate(b["baseline"], (b[metrics[0]], b[metrics[1]]), fontsize=7)
            axes.legend()
        axes.figure.savefig(path, dpi=120, bbox_inches="tight")
        return path
    raise UsageError(f"--plot {path}: allowed extensions: .html, .png")


# ----------------------------------------------------------------------------------------------- one trial
def get_trial(handle: RunHandle, number: int) -> FrozenTrial:
    trials = handle.study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise UsageError(f"study {handle.manifest.name!r} has no trial {number}; trials: 0..{len(trials) - 1}")
    return trials[number]


def export_layout(study: RunHandle | str, trial: int, out: str | os.PathLike | None = None) -> Path:
    """Write trial ``trial``'s layout as a file ``hylo-search promote`` / ``train`` / ``upcycle`` read, with the
    teacher, the upcycle options and the trial's scores. ``study`` is a name, a study folder or a RunHandle."""
    from hylo_model import Layout

    from .layout_files import write_layout
    from .runs import open_run

    handle = open_run(study) if isinstance(study, str) else study
    t = get_trial(handle, trial)
    if t.state != TrialState.COMPLETE:
        reason = t.user_attrs.get("infeasible") or t.user_attrs.get("failure") or t.state.name
        raise UsageError(f"trial {trial} of {handle.manifest.name!r} is {status_of(t)} ({reason}); "
                         "export a completed trial (see `hylo-search pareto`)")
    layout = Layout.parse(t.user_attrs["layout"])
    path = Path(out) if out else handle.folder / "exports" / f"trial_{trial:05d}.yaml"
    metadata = {
        "teacher": _teacher_for_export(handle), "upcycle": handle.manifest.upcycle, "study": handle.manifest.name,
        "trial": trial, "objectives": dict(zip(handle.metrics, t.values)),
        "constraints": dict(t.constraints), "baseline": t.user_attrs.get("baseline"),
        "hylo_version": handle.manifest.version,
    }
    return write_layout(path, layout, **metadata)


def _teacher_for_export(handle: RunHandle) -> str:
    """What ``teacher:`` must say for upcycle / promote to load it: a hub id as is, a local path made absolute,
    a built-in teacher as the directory it was built in (built again, identically, if the cache was removed)."""
    from .teachers import is_builtin, teacher_directory

    teacher = handle.manifest.teacher
    if is_builtin(teacher):
        return str(teacher_directory(teacher, handle.folder / "cache").resolve())
    local = Path(teacher).expanduser()
    return str(local.resolve()) if local.is_dir() else teacher


_COLOURS = {"A": "bold white on red", "L": "black on yellow", "M": "white on blue", "G": "black on green"}


def describe_trial(handle: RunHandle, number: int) -> list[Any]:
    """Rich renderables for ``show``: the layout drawn per layer, objectives, constraints, probes, timings."""
    from rich.table import Table
    from rich.text import Text

    t = get_trial(handle, number)
    attrs = t.user_attrs
    title = f"trial {t.number} of {handle.manifest.name}: {status_of(t)}"
    if attrs.get("baseline"):
        title += f" (baseline {attrs['baseline']})"
    parts: list[Any] = [Text(title, style="bold")]
    tokens = (attrs.get("layout") or "").split(",") if attrs.get("layout") else []
    if tokens:
        drawing = Text("layers  ")
        for i, token in enumerate(tokens):
            drawing.append(f" {token:<4}", style=_COLOURS.get(token[0], ""))
            drawing.append(" ")
        ruler = "index   " + "".join(f" {i:<4} " for i in range(len(tokens)))
        parts += [Text(f"layout  {attrs['layout']}"), drawing, Text(ruler, style="dim"),
                  Text("        A attention  L<rank> MLA  M Mamba2  G Gated DeltaNet", style="dim")]
    run, result = attrs.get("run", {}), attrs.get("result", {})
    notes = {"tier": attrs.get("tier"), "promoted_from (first-tier trial)": attrs.get("promoted_from"),
             "source": attrs.get("source"), "infeasible": attrs.get("infeasible"), "failure": attrs.get("failure"),
             "duplicate_of": attrs.get("duplicate_of"), "proposed_layout (before repair)": run.get("proposed_layout")}
    for label, value in notes.items():
        if value is not None:
            parts.append(Text(f"{label}: {value}", style="red" if label == "failure" else ""))
    if INTERRUPTED_ATTR in t.system_attrs:
        parts.append(Text(f"interrupted: {t.system_attrs[INTERRUPTED_ATTR]}", style="yellow"))
    scores = Table(title="objectives, metrics and constraints (constraints: <= 0 is feasible)")
    scores.add_column("name")
    scores.add_column("value", justify="right")
    for metric, value in zip(handle.metrics, t.values or []):
        scores.add_row(f"objective {metric}", _fmt(value))
    for key, value in sorted((attrs.get("memory") or {}).items()):
        scores.add_row(key, _fmt(value))
    for key, value in sorted((attrs.get("metrics") or {}).items()):
        scores.add_row(key, _fmt(value))
    for key, value in sorted(t.constraints.items()):
        scores.add_row(f"constraint {key}", _fmt(value))
    parts.append(scores)
    tables = {"probes": attrs.get("probe_table"), "per-layer reconstruction": attrs.get("layer_table"),
              "proxy stages (held-out KL before -> after)": (result.get("details") or {}).get("stages")}
    for title_text, rows in tables.items():
        rows = rows or []
        if rows:
            table = Table(title=title_text)
            for column in rows[0]:
                table.add_column(str(column))
            for row in rows:
                table.add_row(*[_fmt(row.get(c)) for c in rows[0]])
            parts.append(table)
    if attrs.get("losses"):
        parts.append(Text("losses: " + "; ".join(f"{k}: {', '.join(_fmt(x) for x in v)}"
                                                 for k, v in attrs["losses"].items())))
    timings = dict(result.get("timings") or {})
    if t.datetime_complete and t.datetime_start:
        timings["total_s"] = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
    if timings:
        parts.append(Text("timings: " + ", ".join(f"{k} {v}" for k, v in timings.items())))
    where = ", ".join(f"{k} {result[k]}" for k in ("node", "host", "device") if result.get(k))
    if where:
        parts.append(Text(f"ran on: {where}", style="dim"))
    return parts
