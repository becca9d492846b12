"""Optuna samplers for layout search, and the one layout-aware sampler: :class:`RepairSampler`.

Per-layer categorical parameters make count rules and budgets nearly impossible to hit by chance (28 layers that
may each be attention, MLA or GDN almost never have "between 2 and 6" attention+MLA layers), and NSGA-II / GP learn
only from completed trials, so proposals that are infeasible teach them nothing. :class:`RepairSampler` wraps any
Optuna sampler: it lets the inner sampler propose every parameter (its relative sample, then its independent
samples for the rest), then moves the proposal to a nearby feasible layout by greedy single-layer changes that
reduce the total constraint violation (:func:`repair`; random tie-breaks, so repeated positions are not favoured),
and when that layout was tried already, to a feasible untried neighbour. The inner sampler then sees only the
repaired, feasible layouts as its trials. BruteForce and Grid are used
unwrapped: they enumerate, and the infeasible layouts are recorded as such without running.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from ..space.compiled import CompiledSpace, layout_code
from .optuna_compat import storage_of, trial_id

PROPOSED_ATTR = "hylo:proposed_layout"


def make_sampler(name: str, space: CompiledSpace, seed: int, repair_enabled: bool = True,
                 options: dict[str, Any] | None = None) -> BaseSampler:
    """An Optuna sampler by name (``tpe``, ``nsga2``, ``gp``, ``random``, ``brute_force``, ``grid``)."""
    options = dict(options or {})
    samplers = optuna.samplers
    if name == "grid":
        return samplers.GridSampler({k: d.choices for k, d in space.distributions().items()}, seed=seed, **options)
    if name == "brute_force":
        return samplers.BruteForceSampler(seed=seed, **options)
    if name == "tpe":
        inner: BaseSampler = samplers.TPESampler(seed=seed, **options)
    elif name == "nsga2":
        inner = samplers.NSGAIISampler(seed=seed, **options)
    elif name == "gp":
        inner = samplers.GPSampler(seed=seed, **options)
    elif name == "random":
        inner = samplers.RandomSampler(seed=seed, **options)
    else:
        raise ValueError(f"unknown sampler {name!r}; allowed: tpe, nsga2, gp, random, brute_force, grid")
    return RepairSampler(inner, space, seed) if repair_enabled and not space.is_ablation else inner


def repair(space: CompiledSpace, tokens: Sequence[str], rng: np.random.Generator) -> list[str]:
    """A feasible layout near ``tokens``: while a constraint is violated, apply the single-layer change (over the
    free layers and their choices) that lowers the summed positive constraint values most; stop when feasible or
    when no change helps (the layout is then returned as is and recorded infeasible).

    Constraints are sums of per-layer shares, so every candidate change is scored at once from the shares."""
    tokens = list(tokens)
    ranks = [t for t in tokens if t.startswith("L")]

    def concrete(token: str) -> str:  # a global-rank space lists "L": it takes the layout's rank
        return (ranks[0] if ranks else f"L{space.global_ranks[0]}") if token == "L" else token

    shares = {t: np.asarray(space.contributions(t), dtype=float)
              for t in {concrete(c) for i in space.free_layers for c in space.choices[i]} | set(tokens)}
    raw = np.sum([shares[t] for t in tokens], axis=0)

    def violation(rows: np.ndarray) -> np.ndarray:
        return np.clip(space.finish_constraints(rows), 0, None).sum(axis=1)

    current = float(violation(raw[None])[0])
    while current > 0:
        moves = [(i, concrete(c)) for i in space.free_layers for c in space.choices[i] if concrete(c) != tokens[i]]
        if not moves:
            break
        rows = np.stack([raw - shares[tokens[i]] + shares[c] for i, c in moves])
        values = violation(rows)
        best = float(values.min())
        if best >= current - 1e-12:
            break
        pick = int(rng.choice(np.flatnonzero(values <= best + 1e-12)))
        i, choice = moves[pick]
        tokens[i], raw, current = choice, rows[pick], best
    return tokens


class RepairSampler(BaseSampler):
    """Wrap ``inner`` so that every proposal meets the space's count rules and budgets when one nearby does.

    The proposal before repair is stored in the trial's system attrs (``hylo:proposed_layout``) when it changed.
    Enqueued trials (baselines, retries) are left alone: their fixed parameters win, as in Optuna.
    """

    def __init__(self, inner: BaseSampler, space: CompiledSpace, seed: int | None = None) -> None:
        self._inner = inner
        self._space = space
        self._rng = np.random.default_rng(seed)

    @property
    def inner(self) -> BaseSampler:
        return self._inner

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._space.distributions()

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space or trial.params or "fixed_params" in trial.system_attrs:
            return {}
        inner_space = self._inner.infer_relative_search_space(study, trial)
        params = dict(self._inner.sample_relative(study, trial, inner_space)) if inner_space else {}
        for name, distribution in search_space.items():
            if name not in params:
                params[name] = self._inner.sample_independent(study, trial, name, distribution)
        proposed = self._space.tokens_from_params(params)
        fixed = self._novel(study, repair(self._space, proposed, self._rng))
        if fixed == proposed:
            return params
        storage_of(study).set_trial_system_attr(trial_id(trial), PROPOSED_ATTR, layout_code(proposed))
        return self._space.params_from_tokens(fixed) or params

    def _novel(self, study: Study, tokens: list[str], attempts: int = 60) -> list[str]:
        """``tokens``, or when that layout was already tried, a feasible untried neighbour: random changes of
        1, 2, ... layers (repaired), so a converged model does not keep proposing what the study holds."""
        seen = {t.user_attrs.get("layout") for t in study.get_trials(deepcopy=False)}
        if layout_code(tokens) not in seen:
            return tokens
        free = self._space.free_layers
        for attempt in range(attempts if free else 0):
            candidate = list(tokens)
            for _ in range(1 + attempt // 20):
                i = free[self._rng.integers(len(free))]
                candidate[i] = self._space.choices[i][self._rng.integers(len(self._space.choices[i]))]
            candidate = repair(self._space, candidate, self._rng)
            if layout_code(candidate) not in seen and self._space.is_feasible(candidate):
                return candidate
        return tokens

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._inner.before_trial(study, trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()
        self._rng = np.random.default_rng()
