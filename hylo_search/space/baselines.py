"""Known layouts every study is compared with (:func:`baselines`), each kept only if the space can express it: the
teacher (all attention), uniform interleave, SMART-like and attention-at-the-end placements (:mod:`.placements`),
all-GDN / all-Mamba2 (only where the count rules allow no full layer), all-MLA (smallest / middle / largest rank), a
Zebra-Llama-like layout (MLA + Mamba2, evenly spaced) and an MLA + GDN layout at SMART positions. ``k`` is the
largest count the space's count rules allow (counting fixed layers) for which the layout meets every constraint
(else the smallest allowed).
"""

from __future__ import annotations

from dataclasses import dataclass

from hylo_model.layout import CODE, LINEAR_MIXERS, layout_code, parse_token

from .compiled import CompiledSpace
from .placements import placed_layout


@dataclass(frozen=True)
class Baseline:
    name: str
    tokens: tuple[str, ...]

    @property
    def code(self) -> str:
        return layout_code(self.tokens)


def baselines(space: CompiledSpace) -> list[Baseline]:
    """The baselines that fit ``space`` (expressible by its per-layer choices), without duplicates."""
    if space.is_ablation:
        return []
    n = space.num_layers
    ranks = sorted({rank for c in space.choices for _, rank in map(parse_token, c) if rank}
                   | set(space.global_ranks))
    mid_rank = ranks[len(ranks) // 2] if ranks else None
    linear = [m for m in LINEAR_MIXERS if CODE[m] in {t for c in space.choices for t in c}]
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
