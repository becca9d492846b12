"""Placements of ``k`` kept layers (attention or MLA) among ``n`` layers, every other layer linear; the ablation
grid and the position-only baselines are built from them:

* ``uniform`` — evenly spaced, ending at the last layer (uniform interleave, e.g. one attention every 4 layers);
* ``smart``   — first and last layer kept, the rest evenly spaced between them (SMART-like layer selection);
* ``end``     — the last k layers (attention only at the end); ``start`` — the first k layers.
"""

from __future__ import annotations

import numpy as np

from hylo_model.layout import CODE, format_token


def positions(num_layers: int, k: int, placement: str) -> list[int]:
    """Indices of the ``k`` kept layers (sorted, distinct)."""
    k = max(0, min(k, num_layers))
    if k == 0:
        return []
    if placement == "uniform":
        return [round((j + 1) * num_layers / k) - 1 for j in range(k)]
    if placement == "smart":
        return sorted({int(round(x)) for x in np.linspace(0, num_layers - 1, k)})
    if placement == "end":
        return list(range(num_layers - k, num_layers))
    if placement == "start":
        return list(range(k))
    raise ValueError(f"unknown placement {placement!r}; allowed: uniform, smart, end, start")


def placed_layout(num_layers: int, placement: str, keep: str, n_keep: int, linear: str,
                  mla_rank: int | None = None) -> list[str]:
    """Tokens of a layout with ``n_keep`` ``keep`` layers at ``placement`` and ``linear`` elsewhere."""
    keep_token = format_token(keep, mla_rank if keep == "mla" else None)
    tokens = [CODE[linear]] * num_layers
    for i in positions(num_layers, n_keep, placement):
        tokens[i] = keep_token
    return tokens
