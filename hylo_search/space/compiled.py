"""A search space bound to a teacher: per-layer token choices, Optuna distributions, exact constraint values,
enumeration, uniform sampling and exact feasibility (fraction and satisfiability).

Tokens are the layout vocabulary of :mod:`hylo_model.layout` (``A``, ``L128``, ``M``, ``G``); in a space with one
global MLA rank, ``L`` stands for whichever rank the ``mla_rank`` parameter picks.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterator, Sequence

import numpy as np

from hylo_model.layout import MIXERS, layout_code, parse_token

from ..errors import UsageError
from .cost import CostModel
from .placements import placed_layout

__all__ = ["CompiledSpace", "layout_code", "token_order"]


def token_order(token: str) -> tuple[str, int]:
    """Sort key of layout tokens: by mixer code, then MLA rank."""
    return token[0], parse_token(token)[1] or 0


class CompiledSpace:
    """A space (:class:`~.rules.SearchSpace`) bound to a teacher: ``choices[i]`` lists layer i's tokens (``A``, ``L128``, ``M``, ``G``; ``L`` takes
    the global rank). Exact constraints need a :class:`CostModel` (budgets); count rules need nothing."""

    def __init__(self, space: Any, num_layers: int, choices: list[list[str]], global_ranks: list[int],
                 costs: CostModel | None) -> None:
        self.space = space
        self.num_layers = num_layers
        self.choices = choices
        self.global_ranks = global_ranks
        self.costs = costs
        self.teacher_tokens = ["A"] * num_layers
        self.free_layers = [i for i, c in enumerate(choices) if len(c) > 1]
        self.uses_global_rank = len(global_ranks) > 1 and any("L" in c for c in choices)

    # ------------------------------------------------------------------------------------------- parameters
    @property
    def is_ablation(self) -> bool:
        return self.space.ablation is not None

    def param_name(self, layer: int) -> str:
        return f"layer_{layer:02d}"

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions, in suggestion order (per-layer tokens, then the global rank; or ablation factors)."""
        from optuna.distributions import CategoricalDistribution

        if self.is_ablation:
            return {k: CategoricalDistribution(v) for k, v in self.space.ablation.factors().items()}
        dists = {self.param_name(i): CategoricalDistribution(self.choices[i]) for i in self.free_layers}
        if self.uses_global_rank:
            dists["mla_rank"] = CategoricalDistribution(self.global_ranks)
        return dists

    def suggest(self, trial: Any) -> list[str]:
        """Ask ``trial`` (an Optuna trial) for every parameter and return the layout's tokens."""
        params = {name: trial.suggest_categorical(name, dist.choices) for name, dist in self.distributions().items()}
        return self.tokens_from_params(params)

    def tokens_from_params(self, params: dict[str, Any]) -> list[str]:
        if self.is_ablation:
            tokens = self.apply_fixed(placed_layout(self.num_layers, **params))
        else:
            tokens = [c[0] for c in self.choices]
            for i in self.free_layers:
                tokens[i] = params[self.param_name(i)]
        if "L" in tokens:
            rank = params.get("mla_rank") or self.global_ranks[0]
            tokens = [f"L{rank}" if t == "L" else t for t in tokens]
        return tokens

    def params_from_tokens(self, tokens: Sequence[str]) -> dict[str, Any] | None:
        """The per-layer parameters giving ``tokens``, or None when the layout is not in the space."""
        if self.is_ablation or len(tokens) != self.num_layers:
            return None
        params: dict[str, Any] = {}
        ranks = {rank for mixer, rank in map(parse_token, tokens) if mixer == "mla" and rank}
        if self.global_ranks:
            if len(ranks) > 1 or not ranks <= set(self.global_ranks):
                return None
            rank = ranks.pop() if ranks else self.global_ranks[0]
            tokens = ["L" if parse_token(t)[0] == "mla" else t for t in tokens]
            if self.uses_global_rank:
                params["mla_rank"] = rank
        for i, token in enumerate(tokens):
            if token not in self.choices[i]:
                return None
            if i in self.free_layers:
                params[self.param_name(i)] = token
        return params

    def apply_fixed(self, tokens: list[str]) -> list[str]:
        """``tokens`` with every single-choice layer (fixed layers, one-mixer rules) set to its only choice."""
        return [c[0] if len(c) == 1 else t for c, t in zip(self.choices, tokens)]

    # ------------------------------------------------------------------------------------------- constraints
    def constraints(self, tokens: Sequence[str]) -> dict[str, float]:
        """Exact constraint values, <= 0 feasible: budgets as relative excess over the limit, count rules as
        layers over the maximum / under the minimum."""
        values: dict[str, float] = {}
        counts = _counts(tokens)
        for rule in self.space.counts:
            n = sum(counts[m] for m in rule.mixers)
            if rule.min > 0:
                values[f"count:{rule.label}>={rule.min}"] = float(rule.min - n)
            if rule.max is not None:
                values[f"count:{rule.label}<={rule.max}"] = float(n - rule.max)
        if self.space.budgets:
            costs = self._need_costs()
            for budget in self.space.budgets:
                limit = self.budget_limit(budget)
                values[budget.key] = (costs.metric(budget.key, tokens) - limit) / limit
        return values

    def budget_limit(self, budget: Any) -> float:
        if not budget.relative:
            return budget.limit
        return budget.limit * self._need_costs().metric(budget.key, self.teacher_tokens)

    def is_feasible(self, tokens: Sequence[str]) -> bool:
        return all(v <= 0 for v in self.constraints(tokens).values())

    def _need_costs(self) -> CostModel:
        if self.costs is None:
            raise RuntimeError("this space has budgets: compile it with a CostModel (the teacher's dimensions)")
        return self.costs

    # ------------------------------------------------------------------------------------------- enumeration
    def size(self) -> int:
        if self.is_ablation:
            return math.prod(len(v) for v in self.space.ablation.factors().values())
        return math.prod(len(self.choices[i]) for i in self.free_layers) * max(1, len(self.global_ranks))

    def iter_tokens(self) -> Iterator[list[str]]:
        """Every layout of the space (ablation: every grid point), in a fixed order."""
        dists = self.distributions()
        for combo in itertools.product(*(d.choices for d in dists.values())):
            yield self.tokens_from_params(dict(zip(dists, combo)))

    def sample(self, rng: np.random.Generator) -> list[str]:
        params = {name: d.choices[rng.integers(len(d.choices))] for name, d in self.distributions().items()}
        return self.tokens_from_params(params)

    def constraint_matrix(self, index: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Vectorised :meth:`constraints` for many layouts at once (the tests hold the two equal).

        ``index``: ``[n, P]`` choice indices into :meth:`distributions` (per-layer mode only). Returns the
        constraint keys and their values ``[n, K]``, <= 0 feasible."""
        names = list(self.distributions())
        columns = {int(name[6:]): j for j, name in enumerate(names) if name.startswith("layer_")}
        rank_col = names.index("mla_rank") if "mla_rank" in names else None
        ranks = self.global_ranks if rank_col is not None else [self.global_ranks[0] if self.global_ranks else 0]
        keys = list(self.constraints(self.tokens_from_params({n: self.distributions()[n].choices[0] for n in names})))
        out = np.zeros((index.shape[0], len(keys)))
        for r, rank in enumerate(ranks):
            rows = index[:, rank_col] == r if rank_col is not None else np.ones(index.shape[0], bool)
            total = np.zeros((int(rows.sum()), len(keys)))
            for layer, choices in enumerate(self.choices):
                tokens = [f"L{rank}" if t == "L" else t for t in choices]
                table = np.array([self.contributions(t) for t in tokens])  # [choices, K]
                picked = index[rows, columns[layer]] if layer in columns else np.zeros(int(rows.sum()), int)
                total += table[picked]
            out[rows] = total
        return keys, self.finish_constraints(out)

    def contributions(self, token: str) -> list[float]:
        """One layer's additive share of each constraint's raw quantity (layer counts, cache bytes, parameters)."""
        mixer = parse_token(token)[0]
        values = []
        for rule in self.space.counts:
            hit = float(mixer in rule.mixers)
            values += [hit] * ((rule.min > 0) + (rule.max is not None))
        for budget in self.space.budgets:
            costs = self._need_costs()
            values.append(costs.layer_params(token) if budget.metric == "params"
                          else costs.layer_cache(token, budget.seq_len))
        return values

    def finish_constraints(self, raw: np.ndarray) -> np.ndarray:
        """Raw sums -> constraint values, in the order :meth:`constraints` lists them."""
        out = raw.copy()
        column = 0
        for rule in self.space.counts:
            if rule.min > 0:
                out[:, column] = rule.min - raw[:, column]
                column += 1
            if rule.max is not None:
                out[:, column] = raw[:, column] - rule.max
                column += 1
        for budget in self.space.budgets:
            limit = self.budget_limit(budget)
            extra = self._need_costs().dense_params if budget.metric == "params" else 0
            out[:, column] = (raw[:, column] + extra - limit) / limit
            column += 1
        return out

    def feasible_fraction(self, samples: int = 100_000, seed: int = 0,
                          exact_limit: int = 1_000_000) -> tuple[float, str]:
        """Fraction of the space that meets every constraint: exact when the space has at most ``exact_limit``
        layouts, else estimated from ``samples`` uniform draws. Returns (fraction, how it was obtained)."""
        size = self.size()
        if self.is_ablation:
            layouts = list(self.iter_tokens())
            hits = sum(self.is_feasible(t) for t in layouts)
            return hits / len(layouts), f"exact, {hits}/{len(layouts)}"
        dims = [len(d.choices) for d in self.distributions().values()]
        if size <= exact_limit:
            index = np.stack(np.unravel_index(np.arange(size), dims), axis=1) if dims else np.zeros((1, 0), int)
        else:
            index = np.stack([np.random.default_rng(seed + j).integers(d, size=samples) for j, d in enumerate(dims)],
                             axis=1)
        _, values = self.constraint_matrix(index)
        hits = int((values <= 0).all(axis=1).sum())
        if size <= exact_limit:
            return hits / index.shape[0], f"exact, {hits}/{index.shape[0]}"
        p = hits / samples
        if hits == 0:  # the "rule of three": 95% upper bound when nothing was seen
            return 0.0, f"0 of {samples} uniform samples; below {3 / samples:.2g} at 95%"
        return p, f"estimated from {samples} uniform samples, ±{1.96 * math.sqrt(p * (1 - p) / samples):.2g}"

    def check_satisfiable(self, where: str) -> None:
        """Raise UsageError when no layout of the space meets a constraint, even taken with the count rules alone:
        a dynamic program over layers (state = capped counts per rule) gives each budget's exact minimum."""
        rules = self.space.counts
        caps = [(r.max if r.max is not None else r.min) + 1 for r in rules]

        def minimum(cost: Any) -> float:
            states: dict[tuple[int, ...], float] = {tuple(0 for _ in rules): 0.0}
            for i in range(self.num_layers):
                nxt: dict[tuple[int, ...], float] = {}
                for state, total in states.items():
                    for token in self.choices[i]:
                        mixer = parse_token(token)[0]
                        key = tuple(min(c + (mixer in r.mixers), cap) for c, r, cap in zip(state, rules, caps))
                        value = total + cost(token)
                        if value < nxt.get(key, math.inf):
                            nxt[key] = value
                states = nxt
            ok = [total for state, total in states.items()
                  if all(r.min <= c and (r.max is None or c <= r.max) for c, r in zip(state, rules))]
            return min(ok) if ok else math.inf

        if minimum(lambda token: 0.0) == math.inf:
            text = "; ".join(f"{r.label} in {r.min}..{r.max if r.max is not None else 'any'}" for r in rules)
            raise UsageError(f"{where}: field 'counts': no layout of the space meets the count rules ({text})")
        for index, budget in enumerate(self.space.budgets):
            costs = self._need_costs()
            if budget.metric == "params":
                best = costs.dense_params + minimum(lambda t: costs.layer_params(self._ranked(t)))
            else:
                best = minimum(lambda t: costs.layer_cache(self._ranked(t), budget.seq_len))
            limit = self.budget_limit(budget)
            if best > limit:
                teacher = costs.metric(budget.key, self.teacher_tokens)
                allowed = f">= {best / teacher:.4g}x" if budget.relative else f">= {best:.4g}"
                raise UsageError(
                    f"{where}: field 'budgets.{index}': impossible constraint {budget.describe()}: the smallest "
                    f"layout of the space has {budget.key} = {best:.4g} = {best / teacher:.4g}x the teacher "
                    f"(limit {limit:.4g}); allowed limits: {allowed}")

    def _ranked(self, token: str) -> str:
        return f"L{min(self.global_ranks)}" if token == "L" else token


def _counts(tokens: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(MIXERS, 0)
    for token in tokens:
        counts[parse_token(token)[0]] += 1
    return counts
