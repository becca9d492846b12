"""The Pareto front as a user reads it: the front and every baseline's standing, as a table (rich), JSON or CSV,
and as a plot (plotly HTML or matplotlib PNG) with the baselines marked; the fidelity audit's warnings.

Nothing here imports torch, so ``pareto`` answers quickly.
"""

from __future__ import annotations

import json
import math
import textwrap
import warnings
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from .. import paths
from ..console import render_text
from ..errors import UsageError
from ..search.replicates import standard_errors, within_noise
from ..search.storage import StudyFolder
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
    """One line per cheap objective whose Spearman correlation with promotion has a 95 % lower bound below the
    threshold, or is undefined (ties)."""
    threshold = audit.get("threshold", AUDIT_THRESHOLD)
    lines = []
    for row in audit["correlations"]:
        rho, ci = row.get("spearman"), row.get("spearman_ci")
        low = ci[0] if ci else rho
        if rho is None or low is None or low < threshold:
            shown = "undefined (ties)" if rho is None else f"{rho:.2f}" + (f", 95% CI {ci[0]:.2f}..{ci[1]:.2f}" if ci
                                                                              else "")
            lines.append(f"objective {row['objective']}: Spearman with the promoted runs {shown} on {row['n']} "
                         f"layouts (lower bound below {threshold:g}): do not trust its ranking alone")
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


def plot_front(handle: StudyFolder, path: Path, cdn: bool = False) -> Path:
    """The front as a picture, baselines marked. ``.png`` (matplotlib): for 2 objectives one scatter, for 3 the
    three 2-D projections with the remaining objective as colour; front trials ringed, baselines as labelled
    diamonds. ``.html`` (plotly): Optuna's interactive Pareto-front plot (3-D for 3 objectives) with a baselines
    trace; self-contained (the installed plotly.js embedded gzip-compressed, about 2 MB, unpacked by the browser)
    or, with ``cdn``, loading plotly.js from its CDN when opened (a few kB). Both show the trials the front is
    taken over: in a two-tier or replicated study, those of the front's tier only."""
    metrics = handle.metrics
    if not 2 <= len(metrics) <= 3:
        raise UsageError(f"--plot needs 2 or 3 objectives; this study has {len(metrics)}")
    if path.suffix not in (".html", ".png"):
        raise UsageError(f"--plot {path}: allowed extensions: .html, .png")
    front = pareto_front(handle.study)
    tiers = {t.user_attrs.get("tier") for t in front}
    compared = [t for t in handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.user_attrs.get("tier") in tiers or not front]
    title = (f"Pareto front of {handle.manifest.name}: {len(front)} of {len(compared)} completed trials"
             + (f" ({', '.join(sorted(map(str, tiers)))} tier)" if len(tiers) == 1 and None not in tiers else ""))
    if path.suffix == ".png":
        return _plot_png(path, metrics, handle.directions, compared, {t.number for t in front}, title)
    return _plot_html(path, metrics, handle.directions, compared, title, cdn)


def _plot_png(path: Path, metrics: list[str], directions: list[str], trials: list[FrozenTrial],
              front: set[int], title: str) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError:
        raise RuntimeError("--plot FILE.png needs matplotlib: pip install 'hylo-search[dashboard]'") from None
    import numpy as np

    values = np.array([t.values for t in trials], dtype=float).reshape(len(trials), len(metrics))
    on_front = np.array([t.number in front for t in trials], dtype=bool)
    baselines = [k for k, t in enumerate(trials) if t.user_attrs.get("baseline")]
    errors = [standard_errors(t, metrics) for t in trials]
    pairs = [(0, 1, None)] if len(metrics) == 2 else [(0, 1, 2), (0, 2, 1), (1, 2, 0)]
    figure, axes = plt.subplots(1, len(pairs), figsize=(6.4 * len(pairs), 5.4), squeeze=False)
    for axis, (x, y, c) in zip(axes[0], pairs):
        colour = values[:, c] if c is not None else np.where(on_front, 1.0, 0.0)
        points = axis.scatter(values[:, x], values[:, y], c=colour, cmap="viridis", s=np.where(on_front, 70, 30),
                              edgecolors=np.where(on_front, "red", "none"), linewidths=1.8, alpha=0.85, zorder=2)
        spread = [(k, errors[k][x], errors[k][y]) for k in range(len(trials)) if errors[k][x] or errors[k][y]]
        if spread:  # replicated trials: +-1 standard error over seeds
            axis.errorbar([values[k, x] for k, _, _ in spread], [values[k, y] for k, _, _ in spread],
                          xerr=[e or 0.0 for _, e, _ in spread], yerr=[e or 0.0 for _, _, e in spread], fmt="none",
                          ecolor="grey", elinewidth=1, capsize=2, zorder=1)
        axis.scatter(values[baselines, x], values[baselines, y], marker="D", s=130, facecolors="none",
                     edgecolors="black", linewidths=1.2, zorder=3)
        for k in baselines:  # numbered here, named in the key below: names overlap where baselines cluster
            axis.annotate(str(trials[k].number), (values[k, x], values[k, y]), xytext=(6, 3),
                          textcoords="offset points", fontsize=8, fontweight="bold", zorder=4)
        for index, set_label in ((x, axis.set_xlabel), (y, axis.set_ylabel)):
            set_label(_axis_label(metrics[index], directions[index]))
            column = values[:, index]
            if len(column) and column.min() > 0 and column.max() >= 20 * column.min():
                (axis.set_xscale if index == x else axis.set_yscale)("log")
        axis.grid(True, alpha=0.3)
        if c is not None:
            figure.colorbar(points, ax=axis).set_label(f"colour: {_axis_label(metrics[c], directions[c])}")
    handles = [Line2D([], [], marker="o", ls="", markerfacecolor="none", markeredgecolor="red", markersize=9,
                      markeredgewidth=1.8, label="on the Pareto front"),
               Line2D([], [], marker="D", ls="", markerfacecolor="none", markeredgecolor="black", markersize=9,
                      label="baseline")]
    axes[0][0].legend(handles=handles, loc="best", fontsize=8)
    figure.suptitle(title + ("; each panel one pair of objectives, the third as colour" if len(metrics) == 3
                             else "") + ("; bars: ±1 standard error over seeds" if any(map(any, errors)) else ""))
    key = "baselines (diamonds, by trial number): " + " · ".join(
        f"{trials[k].number} {trials[k].user_attrs['baseline']}{' (front)' if on_front[k] else ''}"
        for k in baselines)
    lines = textwrap.wrap(key, width=70 * len(pairs)) if baselines else []
    figure.text(0.01, 0.0, "\n".join(lines), fontsize=8, va="top", ha="left")
    figure.tight_layout()
    with paths.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png", bbox_inches="tight")
    plt.close(figure)
    return path


def _axis_label(metric: str, direction: str) -> str:
    return f"{metric} ({'lower' if direction == 'minimize' else 'higher'} is better)"


def _plot_html(path: Path, metrics: list[str], directions: list[str], trials: list[FrozenTrial], title: str,
               cdn: bool) -> Path:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise RuntimeError("--plot FILE.html needs plotly: pip install 'hylo-search[dashboard]'") from None
    import optuna

    # Optuna's plot reads a whole study: the trials compared go into an in-memory one, each with only the user
    # attrs worth a hover (its plot shows them all, and the per-layer / probe tables would make the file grow).
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created in memory" line
    try:
        compared = optuna.create_study(directions=directions)
    finally:
        optuna.logging.set_verbosity(verbosity)
    compared.add_trials([optuna.trial.create_trial(
        values=t.values, params=t.params, distributions=t.distributions, constraints=t.constraints,
        user_attrs={k: t.user_attrs[k] for k in ("layout", "baseline", "tier") if k in t.user_attrs})
        for t in trials])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        compared.set_metric_names(metrics)
    figure = optuna.visualization.plot_pareto_front(compared)
    marks = [t for t in trials if t.user_attrs.get("baseline")]
    trace = go.Scatter3d if len(metrics) == 3 else go.Scatter
    coords = dict(zip("xyz", ([t.values[k] for t in marks] for k in range(len(metrics)))))
    # Open diamonds, so that a baseline's own marker (red on the front, blue off it) shows through; names on the
    # plot only while they are few enough to read, else on hover.
    figure.add_trace(trace(**coords, mode="markers+text" if len(marks) <= 6 else "markers",
                           name="baselines" if len(marks) <= 6 else "baselines (names on hover)",
                           text=[t.user_attrs["baseline"] for t in marks], textposition="top center",
                           hovertext=[f"trial {t.number}: {t.user_attrs['baseline']} {t.user_attrs.get('layout')}"
                                      for t in marks], hoverinfo="text",
                           marker=dict(symbol="diamond-open", size=9 if len(metrics) == 3 else 14, color="black",
                                       line=dict(width=2, color="black"))))
    figure.update_layout(title=title, legend=dict(orientation="h", x=0, y=0, yanchor="top"))  # clear of colour bars
    if cdn:
        paths.atomic_write_text(path, figure.to_html(include_plotlyjs="cdn", full_html=True))
        return path
    paths.atomic_write_text(path, _embedded_html(figure.to_json(), title))
    return path


def _embedded_html(figure_json: str, title: str) -> str:
    """One HTML file with the figure and the installed plotly.js gzip-compressed (the browser's
    ``DecompressionStream`` unpacks it: about 40% of the plain bundle's size, and the same plotly.js version that
    wrote the figure)."""
    import base64
    import gzip
    import html

    from plotly.offline import get_plotlyjs

    bundle = base64.b64encode(gzip.compress(get_plotlyjs().encode(), 9, mtime=0)).decode()
    safe_json = figure_json.replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>
<body style="margin:0">
<div id="front" style="width:100%;height:96vh"></div>
<p id="note" style="font-family:sans-serif"></p>
<script>
const figure = {safe_json};
async function show() {{
  if (typeof DecompressionStream === "undefined") {{
    document.getElementById("note").textContent = "This browser cannot unpack the embedded plotly.js; " +
      "write the plot with `hylo-search pareto NAME --plot FILE.html --plot-cdn`.";
    return;
  }}
  const packed = Uint8Array.from(atob("{bundle}"), (c) => c.charCodeAt(0));
  const stream = new Blob([packed]).stream().pipeThrough(new DecompressionStream("gzip"));
  const script = document.createElement("script");
  script.text = await new Response(stream).text();
  document.head.appendChild(script);
  Plotly.newPlot("front", figure.data, figure.layout, {{responsive: true}});
}}
show();
</script>
</body></html>
"""
