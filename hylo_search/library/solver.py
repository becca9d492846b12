"""The exact assembly solver: layouts that minimise an additive per-block score under the space's constraints.

With the sensitivity table (:mod:`.library`), a layout's cost is approximated by the sum of its blocks' scores
(``kl_weight`` x held-out KL + ``probe_weight`` x probe drop of the block swapped alone into the teacher; the
teacher's attention scores 0). Every constraint of a space is a sum of per-layer shares as well (count rules, cache
bytes, parameters: :meth:`~.spaces.CompiledSpace.contributions`), so the best layout is a multiple-choice knapsack,
solved exactly as a mixed-integer program by :func:`scipy.optimize.milp` (HiGHS): one binary ``x[i, c]`` per
layer i and choice c, ``sum_c x[i, c] = 1``, one linear row per constraint. A space with one global MLA rank is
solved once per rank.

A *pool* comes from solving again with a no-good row per layout already found, ``sum_i x[i, s_i] <= L - d``, which
keeps every new layout at least ``d`` layers (Hamming distance) away from each earlier one. Extra cache budgets
(fractions of the teacher's cache at the target length) are taken in turn, so a pool spans the memory / quality
trade-off. :func:`greedy` is the usual greedy pick, for comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..space.compiled import CompiledSpace, token_order

_REPAIRS = 8  # solutions rejected by the exact check (solver tolerance at a budget's edge) before giving up


@dataclass(frozen=True)
class Pooled:
    tokens: tuple[str, ...]
    score: float
    cache_ratio: float | None  # the extra cache budget it was solved under (None: the space's constraints only)


def library_entries(space: CompiledSpace) -> list[tuple[int, str]]:
    """Every (layer, converted token) a layout of the space can hold (a global MLA rank expanded to each rank; an
    ablation grid's layouts enumerated): the blocks a library holds and the solver scores. Attention is the
    teacher's own layer."""
    entries = set()
    if space.is_ablation:
        for tokens in space.iter_tokens():
            entries |= {(i, t) for i, t in enumerate(tokens) if t != "A"}
    for layer, choices in enumerate([] if space.is_ablation else space.choices):
        for token in choices:
            concrete = [f"L{r}" for r in space.global_ranks] if token == "L" else [token]
            entries |= {(layer, t) for t in concrete if t != "A"}
    return sorted(entries, key=lambda e: (e[0], token_order(e[1])))


def block_scores(rows: Sequence[dict[str, Any]], kl_weight: float = 1.0,
                 probe_weight: float = 0.0) -> dict[tuple[int, str], float]:
    """``{(layer, token): score}`` from sensitivity rows (a missing probe drop counts 0)."""
    return {(int(r["layer"]), r["token"]): kl_weight * float(r["kl"]) + probe_weight * float(r.get("probe_drop") or 0)
            for r in rows}


def layout_score(tokens: Sequence[str], scores: dict[tuple[int, str], float]) -> float:
    """The additive score of a layout: its blocks' scores summed (attention layers score 0)."""
    return sum(_score(scores, i, t) for i, t in enumerate(tokens))


def _score(scores: dict[tuple[int, str], float], layer: int, token: str) -> float:
    if token == "A":
        return 0.0
    try:
        return scores[(layer, token)]
    except KeyError:
        raise ValueError(f"the sensitivity table has no score for layer {layer} ({token}); build the library "
                         "(`hylo-search library STUDY`) for this space") from None


class _Program:
    """One rank's choices with their per-choice scores and constraint shares, as rows ``a . x <= b``."""

    def __init__(self, space: CompiledSpace, rank: int | None, scores: dict[tuple[int, str], float],
                 cache_ratio: float | None, target_length: int | None) -> None:
        self.space = space
        self.choices = [[f"L{rank}" if t == "L" else t for t in c] for c in space.choices]
        self.index = [(i, t) for i, c in enumerate(self.choices) for t in c]
        self.cost = np.array([_score(scores, i, t) for i, t in self.index])
        shares = np.array([space.contributions(t) for _, t in self.index]).reshape(len(self.index), -1)
        # finish_constraints is affine per column: value_k = slope_k * raw_k + offset_k <= 0.
        width = shares.shape[1]
        offset = space.finish_constraints(np.zeros((1, width)))[0]
        slope = np.diag(space.finish_constraints(np.eye(width))) - offset if width else np.zeros(0)
        rows, bounds = [shares[:, k] * slope[k] for k in range(width)], list(-offset)
        self.cache_limit = None
        if cache_ratio is not None:
            costs = space.costs
            self.cache_limit = cache_ratio * costs.layout_cache(space.teacher_tokens, target_length)
            rows.append(np.array([costs.layer_cache(t, target_length) for _, t in self.index], dtype=float))
            bounds.append(self.cache_limit)
        self.target_length = target_length
        self.rows = []
        for row, bound in zip(rows, bounds):  # scaled to O(1): budgets are in bytes or parameters
            scale = max(abs(bound), float(np.abs(row).max(initial=0.0)), 1e-12)
            self.rows.append((row / scale, bound / scale))

    def feasible(self, tokens: list[str]) -> bool:
        """The exact check (integer and byte arithmetic, no solver tolerance)."""
        if not self.space.is_feasible(tokens):
            return False
        return self.cache_limit is None or \
            self.space.costs.layout_cache(tokens, self.target_length) <= self.cache_limit

    def solve(self, avoid: Sequence[tuple[Sequence[str], int]]) -> tuple[list[str], float] | None:
        """The lowest-score feasible layout at least d layers from each (layout, d) in ``avoid``."""
        from scipy.optimize import Bounds, LinearConstraint, milp

        n, layers = len(self.index), len(self.choices)
        layer_of = np.array([i for i, _ in self.index])
        matrix = [(layer_of == i).astype(float) for i in range(layers)]  # one choice per layer
        lower, upper = [1.0] * layers, [1.0] * layers
        for row, bound in self.rows:
            matrix.append(row)
            lower.append(-np.inf)
            upper.append(bound)
        avoid = list(avoid)
        for _ in range(_REPAIRS):
            extra = [np.array([1.0 if t == layout[i] else 0.0 for i, t in self.index]) for layout, _ in avoid]
            a = np.array(matrix + extra)
            hi = np.array(upper + [layers - d for _, d in avoid])
            lo = np.array(lower + [-np.inf] * len(avoid))
            result = milp(self.cost, integrality=np.ones(n), bounds=Bounds(0, 1),
                          constraints=LinearConstraint(a, lo, hi))
            if result.status != 0 or result.x is None:
                return None
            picked = [t for (i, t), v in zip(self.index, result.x) if v > 0.5]
            if self.feasible(picked):
                return picked, float(sum(c for c, v in zip(self.cost, result.x) if v > 0.5))
            avoid.append((picked, 1))  # on a budget's edge within the solver's tolerance: exclude it, solve again
        return None


def _ranks(space: CompiledSpace) -> list[int | None]:
    if space.is_ablation:
        raise ValueError("the assembly solver needs a per-layer space, not an ablation grid")
    return list(space.global_ranks) or [None]


def solve(space: CompiledSpace, scores: dict[tuple[int, str], float], avoid: Sequence[Sequence[str]] = (),
          min_distance: int = 1, cache_ratio: float | None = None,
          target_length: int | None = None) -> tuple[list[str], float] | None:
    """The feasible layout of ``space`` with the lowest additive score (None when none is feasible), at least
    ``min_distance`` layers from each layout in ``avoid``, and under ``cache_ratio`` x the teacher's cache at
    ``target_length`` when given."""
    if cache_ratio is not None and not target_length:
        raise ValueError("a cache ratio needs the target length")
    best = None
    for rank in _ranks(space):
        program = _Program(space, rank, scores, cache_ratio, target_length)
        found = program.solve([(list(a), min_distance) for a in avoid])
        if found is not None and (best is None or found[1] < best[1] - 1e-12):
            best = found
    return best


def solve_pool(space: CompiledSpace, scores: dict[tuple[int, str], float], size: int, min_distance: int = 1,
               cache_ratios: Sequence[float] = (), target_length: int | None = None) -> list[Pooled]:
    """Up to ``size`` layouts, each the best one at least ``min_distance`` layers from all found before it; with
    ``cache_ratios``, the budgets are taken in turn (a budget that admits no more layouts drops out)."""
    levels: list[float | None] = list(cache_ratios) or [None]
    pool: list[Pooled] = []
    open_levels = list(levels)
    while len(pool) < size and open_levels:
        for level in list(open_levels):
            if len(pool) >= size:
                break
            found = solve(space, scores, [p.tokens for p in pool], min_distance, level, target_length)
            if found is None:
                open_levels.remove(level)
                continue
            pool.append(Pooled(tuple(found[0]), found[1], level))
    return pool


def greedy(space: CompiledSpace, scores: dict[tuple[int, str], float], cache_ratio: float | None = None,
           target_length: int | None = None) -> list[str] | None:
    """The greedy pick: start from every layer's lowest-score choice and, while a constraint is violated, apply
    the single-layer change that removes the most violation per unit of score added (None if it gets stuck)."""
    best = None
    for rank in _ranks(space):
        program = _Program(space, rank, scores, cache_ratio, target_length)
        found = _greedy(program)
        if found is not None and (best is None or layout_score(found, scores) < layout_score(best, scores)):
            best = found
    return best


def _greedy(program: _Program) -> list[str] | None:
    choices = program.choices
    position = {key: j for j, key in enumerate(program.index)}
    matrix = np.array([row for row, _ in program.rows]).reshape(len(program.rows), len(program.index))
    bounds = np.array([b for _, b in program.rows])
    picks = [min(range(len(c)), key=lambda k, i=i: program.cost[position[(i, choices[i][k])]])
             for i, c in enumerate(choices)]
    columns = [position[(i, c[k])] for i, (c, k) in enumerate(zip(choices, picks))]
    load = matrix[:, columns].sum(axis=1)

    def violation(values: np.ndarray) -> np.ndarray:
        return np.clip(values - bounds[:, None], 0, None).sum(axis=0)

    current = float(violation(load[:, None])[0])
    while current > 1e-12:
        moves = [(i, j) for i, c in enumerate(choices) for t in c for j in [position[(i, t)]] if j != columns[i]]
        if not moves:
            return None
        loads = np.stack([load - matrix[:, columns[i]] + matrix[:, j] for i, j in moves], axis=1)
        gain = current - violation(loads)
        added = np.array([program.cost[j] - program.cost[columns[i]] for i, j in moves])
        ratio = np.where(gain > 1e-12, gain / np.maximum(added, 1e-12), -math.inf)
        pick = int(np.argmax(ratio))
        if ratio[pick] == -math.inf:
            return None
        i, j = moves[pick]
        columns[i], load, current = j, loads[:, pick], current - float(gain[pick])
    tokens = [program.index[j][1] for j in columns]
    return tokens if program.feasible(tokens) else None
