"""The Pareto front as a user reads it: the front and every baseline's standing, as a table (rich), JSON or CSV,
and as a plot (plotly HTML or matplotlib PNG) with the baselines marked; the fidelity audit's warnings.

Nothing here imports torch, so ``pareto`` answers quickly.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from .. import paths
from ..console import render_text
from ..errors import UsageError
from ..search.storage import StudyFolder
from ..search.replicates import standard_errors, within_noise
from ..search.trials import pareto_front, status_of

AUDIT_THRESHOLD = 0.5  # a cheap objective whose Spearman correlation with the longer proxy is below this is flagged


def summary_row(t: FrozenTrial, metrics: list[str]) -> dict[str, Any]:
    """One trial as the front report shows it: objective values (means over seeds for a replicated trial) and,
    where replicated, each objective's standard error (``<metric>_se``) and the number of seeds."""
    attrs = t.user_attrs
    row = {
        "trial": t.number, "layout": attrs.get("layout"), "baseline": attrs.get("baseline"), "tier": attrs.get("tier"),
        **{m: v for m, v in zip(metrics, t.values or [None] * len(metrics))},
        "cache_ratio": (attrs.get("memory") or {}).get("cache_ratio"),
        "params_ratio": (attrs.get("memory") or {}).get("params_ratio"),
    }
    if attrs.get("replicates"):
        row.update({f"{m}_se": se for m, se in zip(metrics, standard_errors(t, metrics))},
                   seeds=len(attrs["replicates"].get("seeds", [])))
    return row


def _tier_rank(t: FrozenTrial) -> int:
    return 2 if "replicate_of" in t.user_attrs else 1 if "promoted_from" in t.user_attrs else 0


def front_report(handle: StudyFolder) -> dict[str, Any]:
    """The front, and every baseline's standing (on the front, dominated, infeasible, failed, pending, or "lower
    tier" when its best result is of a tier the front is not taken over), and the fidelity audit's warnings. A front
    member that another trial could dominate within noise lists it under ``within_noise``."""
    metrics, directions = handle.metrics, handle.directions
    trials = handle.study.get_trials(deepcopy=False)
    front = pareto_front(handle.study)
    on_front = {t.number for t in front}
    front_rank = max((_tier_rank(t) for t in front), default=0)
    peers = [t for t in trials if t.state == TrialState.COMPLETE and _tier_rank(t) == front_rank
             and all(v <= 0 for v in t.constraints.values())]
    rows = []
    for t in front:
        rows.append({**summary_row(t, metrics), "within_noise": within_noise(t, peers, metrics, directions)})
    best: dict[str, FrozenTrial] = {}
    for t in trials:  # one entry per baseline: its trial of the highest tier
        name = t.user_attrs.get("baseline")
        if name and t.state != TrialState.WAITING and (name not in best or _tier_rank(t) >= _tier_rank(best[name])):
            best[name] = t
    baselines = []
    for t in best.values():
        standing = "front" if t.number in on_front else status_of(t) if t.state != TrialState.COMPLETE else \
            "lower tier" if _tier_rank(t) < front_rank else "dominated"
        baselines.append({**summary_row(t, metrics), "standing": standing})
    return {"study": handle.manifest.name, "objectives": handle.manifest.objectives, "front": rows,
            "baselines": sorted(baselines, key=lambda b: b["trial"]), "warnings": audit_warnings(handle.folder)}


def audit_warnings(folder: Path) -> list[str]:
    """Warnings from the study folder's fidelity audit (``hylo-search audit``), if it has one."""
    try:
        return audit_warnings_of(json.loads((Path(folder) / paths.AUDIT).read_text()))
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
    from rich.table import Table

    directions = {o["metric"]: "↓" if o["direction"] == "minimize" else "↑" for o in report["objectives"]}
    seeds = max((row.get("seeds") or 0 for row in report["front"]), default=0)
    noted = [row for row in report["front"] if row.get("within_noise")]
    how = f"means ± standard error over {seeds} seeds; " if seeds else ""
    title = f"Pareto front of {report['study']} ({len(report['front'])} trials; {how}* = baseline" + \
        ("; ~ = could be dominated within 2 SE)" if noted else ")")
    table = Table(title=title)
    for name in ["trial", "layout", *[f"{m} {directions[m]}" for m in metrics], "cache×teacher"]:
        table.add_column(name, overflow="fold")
    for row in report["front"]:
        mark = ("*" if row["baseline"] else "") + ("~" if row.get("within_noise") else "")
        table.add_row(f"{row['trial']}{mark}", row["layout"],
                      *[format_value(row[m], row.get(f"{m}_se")) for m in metrics], format_value(row["cache_ratio"]))
    parts: list[Any] = [table]
    parts += [f"~ trial {row['trial']}: within 2 SE of being dominated by trial(s) "
              f"{', '.join(str(n) for n in row['within_noise'])}" for row in noted]
    if report["baselines"]:
        parts.append("baselines: " + "; ".join(f"{b['baseline']} (trial {b['trial']}): {b['standing']}"
                                               for b in report["baselines"]))
    parts += [f"warning: {warning}" for warning in report.get("warnings", [])]
    return render_text(*parts)


def format_value(value: Any, se: float | None = None) -> str:
    """A number to 4 significant digits (``mean ± se`` with a standard error; exact metrics have se 0)."""
    if se:
        return f"{format_value(value)} ± {se:.2g}"
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def plot_front(handle: StudyFolder, path: Path) -> Path:
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
