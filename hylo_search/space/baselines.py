"""Known layouts every study is compared with, and the placements the ablation grid is built from.

Placements of ``k`` kept layers (attention or MLA) among ``n`` layers, every other layer linear:

* ``uniform`` — evenly spaced, ending at the last layer (uniform interleave, e.g. one attention every 4 layers);
* ``smart``   — first and last layer kept, the rest evenly spaced between them (SMART-like layer selection);
* ``end``     — the last k layers (attention only at the end); ``start`` — the first k layers.

Baselines (:func:`baselines`), each kept only if the space can express it: the teacher (all attention), uniform
interleave, SMART-like, attention at the end, all-GDN / all-Mamba2 (only where the count rules allow no full
layer), all-MLA (smallest / middle / largest rank), a Zebra-Llama-like layout (MLA + Mamba2, evenly spaced) and an
MLA + GDN layout at SMART positions. ``k`` is the largest count the
space's count rules allow (counting fixed layers) for which the layout meets every constraint (else the
smallest allowed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .spaces import CODE, LINEAR, layout_code

if TYPE_CHECKING:
    from .spaces import CompiledSpace


@dataclass(frozen=True)
class Baseline:
    name: str
    tokens: tuple[str, ...]

    @property
    def code(self) -> str:
        return layout_code(self.tokens)


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
    keep_token = f"L{mla_rank}" if keep == "mla" else CODE[keep]
    tokens = [CODE[linear]] * num_layers
    for i in positions(num_layers, n_keep, placement):
        tokens[i] = keep_token
    return tokens


def baselines(space: CompiledSpace) -> list[Baseline]:
    """The baselines that fit ``space`` (expressible by its per-layer choices), without duplicates."""
    if space.is_ablation:
        return []
    n = space.num_layers
    ranks = sorted({int(t[1:]) for c in space.choices for t in c if t.startswith("L") and t[1:]}
                   | set(space.global_ranks))
    mid_rank = ranks[len(ranks) // 2] if ranks else None
    linear = [m for m in LINEAR if CODE[m] in {t for c in space.choices for t in c}]
    keep_rules = [r for r in space.space.counts if set(r.mixers) <= {"attention", "mla"}]
    k_min = max([r.min for r in keep_rules] + [1])
    k_max = min([r.max for r in keep_rules if r.max is not None] + [max(1, n // 4)])
    k_max = max(k_min, k_max)

    def best(placement: str, keep: str, lin: str) -> list[str]:
        # Down to k = 0: fixed layers (e.g. layer 0 kept as attention) count towards the rules too.
        candidates = {k: space.apply_fixed(placed_layout(n, placement, keep, k, lin, mid_rank))
                      for k in range(k_max, -1, -1)}
        return next((c for c in candidates.values() if space.is_feasible(c)), candidates[k_min])

    proposals: list[tuple[str, list[str]]] = [("teacher", ["A"] * n)]
    for lin in linear:
        proposals += [
            (f"uniform_interleave_{lin}", best("uniform", "attention", lin)),
            (f"smart_{lin}", best("smart", "attention", lin)),
            (f"attention_at_end_{lin}", best("end", "attention", lin)),
        ]
    # Pure linear models (no attention or MLA anywhere), where the space allows them: the floor on recall.
    proposals += [(f"all_{lin}", [CODE[lin]] * n) for lin in linear]
    if ranks:
        for rank in sorted({ranks[0], mid_rank, ranks[-1]}):
            proposals.append((f"all_mla_r{rank}", [f"L{rank}"] * n))
        if "mamba2" in linear:
            proposals.append(("zebra_like_mla_mamba2", best("uniform", "mla", "mamba2")))
        if "gdn" in linear:
            proposals.append(("smart_mla_gdn", best("smart", "mla", "gdn")))
    found: dict[str, Baseline] = {}
    for name, tokens in proposals:
        tokens = space.apply_fixed(list(tokens))
        if space.params_from_tokens(tokens) is not None and layout_code(tokens) not in found:
            found[layout_code(tokens)] = Baseline(name, tuple(tokens))
    return list(found.values())
