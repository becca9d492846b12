"""Known layouts every study is compared with (:func:`baselines`), each kept only if the space can express it: the
teacher (all attention), uniform interleave, SMART-like and attention-at-the-end placements (:mod:`.placements`),
all-GDN / all-Mamba2 (only where the count rules allow no full layer), all-MLA (smallest / middle / largest rank), a
Zebra-Llama-like layout (MLA + Mamba2, evenly spaced) and an MLA + GDN layout at SMART positions. ``k`` is the
largest count the space's count rules allow (counting fixed layers) for which the layout meets every constraint
(else the smallest allowed).

Baselines placed by measured scores (:func:`measured_baselines`, from the block library's table, enqueued once the
library exists): ``kl_guided_<linear>`` (and ``kl_guided_mla_<linear>``) keep as attention (MLA) the ``k`` layers
whose restoration alone in the all-linear student, assembled from aligned blocks, lowers held-out KL(teacher ||
student) most (KL-guided layer selection); ``smart_sensitivity_<linear>`` keeps the ``k`` layers whose conversion
alone into the teacher raises held-out KL most (SMART-like, from the measured one-layer-swapped sensitivity).
:func:`restore_plan` names the restorations the library scores for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hylo_model.layout import CODE, LINEAR_MIXERS, layout_code, parse_token

from .compiled import CompiledSpace
from .placements import placed_layout


@dataclass(frozen=True)
class Baseline:
    """``note``: how it was placed when that needs saying (adapted to the budget, or infeasible at every count)."""

    name: str
    tokens: tuple[str, ...]
    note: str = ""

    @property
    def code(self) -> str:
        return layout_code(self.tokens)


def baselines(space: CompiledSpace) -> list[Baseline]:
    """The baselines that fit ``space`` (expressible by its per-layer choices), without duplicates."""
    if space.is_ablation:
        return []
    n = space.num_layers
    ranks = _ranks(space)
    mid_rank = ranks[len(ranks) // 2] if ranks else None
    linear = _linear(space)
    k_min, k_max = _keep_counts(space)

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


def _ranks(space: CompiledSpace) -> list[int]:
    return sorted({rank for c in space.choices for _, rank in map(parse_token, c) if rank} | set(space.global_ranks))


def _linear(space: CompiledSpace) -> list[str]:
    """The linear mixers the space offers (names, in :data:`LINEAR_MIXERS` order)."""
    return [m for m in LINEAR_MIXERS if CODE[m] in {t for c in space.choices for t in c}]


def _keep_counts(space: CompiledSpace) -> tuple[int, int]:
    """(k_min, k_max) of kept (attention or MLA) layers: the count rules on them, at most a quarter of the layers
    when no rule caps them."""
    keep_rules = [r for r in space.space.counts if set(r.mixers) <= {"attention", "mla"}]
    k_min = max([r.min for r in keep_rules] + [1])
    k_max = min([r.max for r in keep_rules if r.max is not None] + [max(1, space.num_layers // 4)])
    return k_min, max(k_min, k_max)


def _allows(space: CompiledSpace, layer: int, token: str) -> bool:
    choices = space.choices[layer]
    return token in choices or (token.startswith("L") and "L" in choices and int(token[1:]) in space.global_ranks)


@dataclass(frozen=True)
class Restore:
    """One group of KL-guided restorations: ``base`` is the all-``linear`` layout (layers that cannot take it keep
    their attention, or their only choice), and each of ``layers`` is restored to ``keep`` alone in it."""

    linear: str
    keep: str
    base: tuple[str, ...]
    layers: tuple[int, ...]


def restore_plan(space: CompiledSpace) -> list[Restore]:
    """The restorations the block library scores: per linear token of the space (``G``, ``M``), every layer
    restored alone to the teacher's attention and to the middle MLA rank (the rank the MLA baselines keep), where
    the layer may hold that token. Empty for an ablation grid (its layouts are fixed)."""
    if space.is_ablation:
        return []
    ranks = _ranks(space)
    keeps = ["A"] + ([f"L{ranks[len(ranks) // 2]}"] if ranks else [])
    plan = []
    for code in (CODE[m] for m in _linear(space)):
        base = _all_linear(space, code)
        for keep in keeps:
            layers = tuple(i for i, t in enumerate(base) if t == code and _allows(space, i, keep))
            if layers:
                plan.append(Restore(code, keep, tuple(base), layers))
    return plan


def _all_linear(space: CompiledSpace, code: str) -> list[str]:
    """Every layer ``code`` where the space allows it, else attention, else the layer's first choice (``L``: the
    middle rank, the one a global-rank space's MLA baselines use)."""
    ranks = _ranks(space)
    tokens = [code if _allows(space, i, code) else "A" if "A" in c else c[0] for i, c in enumerate(space.choices)]
    return [f"L{ranks[len(ranks) // 2]}" if t == "L" else t for t in space.apply_fixed(tokens)]


def measured_baselines(space: CompiledSpace, table: dict[str, Any]) -> list[Baseline]:
    """Baselines placed by the library's measured scores (``table``: ``library.json``, its ``rows`` and
    ``restore``): ``kl_guided_<linear>`` / ``kl_guided_mla_<linear>`` keep the ``k`` layers with the largest restore
    drop (``kl_all - kl_restored``), ``smart_sensitivity_<linear>`` the ``k`` layers with the largest one-layer
    swapped KL; ``k`` as in :func:`baselines` (the largest count allowed for which the layout is feasible), with a
    note saying which layers were kept, and when the budget made ``k`` smaller than the count rules allow. Ties go
    to the lower layer. Layouts may repeat each other or a position baseline (enqueued once, under the first name)."""
    if space.is_ablation:
        return []
    k_min, k_max = _keep_counts(space)
    by_code = {CODE[m]: m for m in _linear(space)}
    proposals: list[tuple[str, str, str, dict[int, float]]] = []  # (name, linear, keep, score per layer)
    for plan in restore_plan(space):
        drops = {int(r["layer"]): float(r["kl_drop"]) for r in table.get("restore", [])
                 if r["linear"] == plan.linear and r["keep"] == plan.keep and r["layer"] in plan.layers}
        kind = "kl_guided" if plan.keep == "A" else "kl_guided_mla"
        if drops:
            proposals.append((f"{kind}_{by_code[plan.linear]}", plan.linear, plan.keep, drops))
    for code, mixer in by_code.items():
        base = _all_linear(space, code)
        swapped = {int(r["layer"]): float(r["kl"]) for r in table.get("rows", [])
                   if r["token"] == code and r.get("kl") is not None and base[int(r["layer"])] == code
                   and _allows(space, int(r["layer"]), "A")}
        if swapped:
            proposals.append((f"smart_sensitivity_{mixer}", code, "A", swapped))
    found: list[Baseline] = []
    for name, code, keep, scores in proposals:
        ranked = sorted(scores, key=lambda i: (-scores[i], i))
        top = min(k_max, len(ranked))
        candidates = {}
        for k in range(top, -1, -1):
            tokens = _all_linear(space, code)
            for i in ranked[:k]:
                tokens[i] = keep
            candidates[k] = tokens
        k = next((k for k, c in candidates.items() if space.is_feasible(c)), None)
        if k is None:
            k = min(k_min, top)
            note = f"infeasible at every count of kept layers 0..{top}; shown with {k}"
        else:
            note = f"keeps layer{'s' if k != 1 else ''} {', '.join(map(str, sorted(ranked[:k]))) or 'none'}"
            if k < top:
                note += f"; adapted to the constraints: {k} kept layers, the count rules allow {top}"
        if space.params_from_tokens(candidates[k]) is not None:
            found.append(Baseline(name, tuple(candidates[k]), note))
    return found
