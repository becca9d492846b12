"""The sensitivity table the block library writes (``<study>/library.json``), read back without torch: per (layer,
token) the cost of swapping that one block into the teacher, and per (layer, kept token, linear token) the KL drop
of restoring that one layer in the all-linear student (``restore``; column ``A in G``), as a heat map (layers x
columns) in the terminal (rich), as JSON / CSV, or as a PNG (matplotlib)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .. import paths
from ..console import render_text
from ..errors import UsageError

METRICS = {"kl": "held-out KL of the teacher with this block", "probe_drop": "probe drop (teacher - this)",
           "ce": "held-out cross-entropy", "align_after": "align loss after training",
           "kl_drop": "KL drop restoring this layer alone in the all-linear student (column: kept in linear)"}
RESTORE_METRICS = {"kl_drop"}  # read from the table's restore rows, not its block rows


def table_folder(ref: str, out: str | None = None) -> Path:
    """The folder holding a study's library table: ``--out``, a folder, a study name under the output root, or a
    study definition (its folder by name)."""
    if out:
        return Path(out)
    for folder in (Path(ref), paths.output_root() / ref):
        if (folder / paths.LIBRARY_TABLE).is_file():
            return folder
    from ..study import load_study  # only for a study definition: loading one imports torch

    return paths.output_root() / load_study(ref).name


def read_table(folder: Path) -> dict[str, Any]:
    path = Path(folder) / paths.LIBRARY_TABLE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no block library at {path}: run `hylo-search library STUDY` first") from None
    except (OSError, ValueError) as error:
        raise UsageError(f"{path}: cannot read the library table ({error})") from None


def heat_map(table: dict[str, Any], metric: str) -> tuple[list[int], list[str], list[list[float | None]]]:
    """(layers, tokens, values[layer][token]) of one metric; None where a layer cannot take a token."""
    if metric not in METRICS:
        raise UsageError(f"--metric {metric!r}: allowed: {', '.join(METRICS)}")
    if metric in RESTORE_METRICS:
        return _restore_map(table.get("restore", []), metric)
    rows = table["rows"]
    layers = sorted({r["layer"] for r in rows})
    order = {r["token"]: (r["token"][0], r.get("rank") or 0) for r in rows}  # by mixer code, then MLA rank
    tokens = sorted(order, key=order.__getitem__)
    cell = {(r["layer"], r["token"]): r.get(metric) for r in rows}
    return layers, tokens, [[cell.get((i, t)) for t in tokens] for i in layers]


def _restore_map(rows: list[dict[str, Any]], metric: str) -> tuple[list[int], list[str], list[list[float | None]]]:
    """The restore rows as (layers, "<keep> in <linear>" columns, values); linear tokens by code, attention first."""
    def order(token: str) -> tuple[int, str, int]:
        return (token != "A", token[0], int(token[1:] or 0) if token[0] == "L" else 0)

    layers = sorted({r["layer"] for r in rows})
    pairs = sorted({(r["linear"], r["keep"]) for r in rows}, key=lambda p: (order(p[0]), order(p[1])))
    cell = {(r["layer"], r["linear"], r["keep"]): r.get(metric) for r in rows}
    return layers, [f"{k} in {lin}" for lin, k in pairs], [[cell.get((i, *p)) for p in pairs] for i in layers]


def format_table(table: dict[str, Any], metrics: list[str], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(table, indent=2)
    if fmt == "csv":
        import csv
        import io

        buffer = io.StringIO()
        fields = ["layer", "token", "mixer", "rank", "kl", "ce", "probe", "teacher_probe", "probe_drop",
                  "align_before", "align_after", "train_steps", "train_tokens", "train_s", "sensitivity_s"]
        writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table["rows"])
        return buffer.getvalue().rstrip("\n")
    parts: list[Any] = []
    for metric in metrics:
        parts += list(_rich_heat_map(table, metric))
    if not table.get("complete", True):
        parts.append("warning: the library is incomplete (a task failed); rerun `hylo-search library`")
    return render_text(*parts)


def _rich_heat_map(table: dict[str, Any], metric: str) -> tuple[str, Any]:
    from rich.table import Table

    layers, tokens, values = heat_map(table, metric)
    finite = [v for row in values for v in row if v is not None and math.isfinite(v)]
    low, high = (min(finite), max(finite)) if finite else (0.0, 0.0)
    probe = next((r.get("probe_length") for r in table["rows"] if r.get("probe_length")), None)
    where = f" at {probe} tokens" if metric == "probe_drop" and probe else ""
    darker = "more worth keeping" if metric == "kl_drop" else "worse"
    heading = f"{table['study']}: {METRICS[metric]}{where}, per layer (rows) and block (columns); darker = {darker}"
    grid = Table()
    grid.add_column("layer", justify="right")
    for token in tokens:
        grid.add_column(token, justify="right")
    for layer, row in zip(layers, values):
        cells = []
        for value in row:
            if value is None:
                cells.append("")
                continue
            shade = 0.0 if high <= low else (value - low) / (high - low)
            red = 255
            rest = int(255 - 180 * shade)
            cells.append(f"[black on #{red:02x}{rest:02x}{rest:02x}]{value:.4g}[/]")
        grid.add_row(str(layer), *cells)
    return heading, grid


def plot_heat_map(table: dict[str, Any], metrics: list[str], path: Path) -> Path:
    """A PNG with one heat map (layers x blocks) per metric. Each colour scale starts at 0 (no cost: white), so
    the shade says how much a block costs, not how it ranks (a negative probe drop, a block that probes better
    than the teacher, is white too); each cell is labelled with its value while they stay legible (<= 300
    cells); blank cells are layers that cannot take the block."""
    if path.suffix != ".png":
        raise UsageError(f"--plot {path}: allowed extension: .png")
    figure = heat_map_figure(table, metrics)
    import matplotlib.pyplot as plt  # imported by heat_map_figure, which says how to install it

    with paths.atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(figure)
    return path


def heat_map_figure(table: dict[str, Any], metrics: list[str]) -> Any:
    """The matplotlib figure :func:`plot_heat_map` saves: one image per metric, colour limits ``(0, max)``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot FILE.png needs matplotlib: pip install 'hylo-search[dashboard]'") from None
    import numpy as np

    figure, axes = plt.subplots(1, len(metrics), figsize=(3 + 1.2 * len(metrics) * 4, 6), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        layers, tokens, values = heat_map(table, metric)
        grid = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
        finite = grid[np.isfinite(grid)]
        top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        image = axis.imshow(grid, aspect="auto", cmap="Reds", vmin=0.0, vmax=top)
        if grid.size <= 300:
            for (row, column), value in np.ndenumerate(grid):
                if np.isfinite(value):
                    axis.text(column, row, f"{value:.3g}", ha="center", va="center", fontsize=7,
                              color="white" if value > 0.6 * top else "black")
        axis.set_xticks(range(len(tokens)), tokens)
        axis.set_yticks(range(len(layers)), [str(i) for i in layers])
        axis.set_xlabel("block")
        axis.set_ylabel("layer")
        axis.set_title(METRICS[metric])
        figure.colorbar(image, ax=axis)
    figure.suptitle(f"block sensitivity of {table['study']}")
    return figure
