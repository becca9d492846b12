"""Replicates: the search's answer re-scored with several seeds, so every score carries its noise.

After the search (and a two-tier study's promotions) the *finalists* — the layouts on the front and every baseline
— each run ``replicates.seeds`` times with the study's proxy: seed s, s+1, ... (the proxy's data order and the
probe prompts change with the seed; its held-out documents are the study's, the same for every seed) and
``replicates.probe_samples`` probe samples per (task, length). A finalist's runs become one trial of its own:
tier ``replicated``, ``replicate_of`` the trial it replicates, objective values the means over seeds (what Optuna
sees and sorts by), and a ``replicates`` user attr with, per metric, the mean, the standard error of the mean
(sample standard deviation / sqrt(n); 0 for the exact memory metrics) and the per-seed values. The front is then
taken over the replicated trials (:func:`~.trials.pareto_front`), and a front member whose lead over some other
trial is within noise is marked (:func:`within_noise`).

The first round's finalists come from single runs, so a layout that one unlucky seed put just behind the front
would never be replicated. With ``replicates.race`` (the default) a second round follows, as racing methods
(F-Race, irace) do: the first round's replicates measure a single run's noise per objective (:func:`run_noise`),
and every other layout whose single run, given that noise, the replicated finalists do not dominate is replicated
too (:func:`in_reach`). Both rounds are fixed by the first-tier trials alone, so a resumed study replicates what
an uninterrupted one does.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from ..worker.tasks import Failure
from .optuna_compat import non_domination_rank

TIER = "replicated"
NOISE_SE = 2.0  # a difference of less than this many combined standard errors is not significant


@dataclass
class Finalist:
    """One layout to replicate: its first trial (``parent``), its seeds, and the records that came back."""

    parent: FrozenTrial
    seeds: list[int]
    records: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def tokens(self) -> list[str]:
        return self.parent.user_attrs["layout"].split(",")

    @property
    def done(self) -> bool:
        return len(self.records) == len(self.seeds)


def _unreplicated(trials: Sequence[FrozenTrial]) -> dict[str, FrozenTrial]:
    """Per layout, the trial that stands for it before replicates: its earliest completed feasible trial of the
    highest tier it reached (a promoted, second-tier trial over the first-tier one)."""
    best: dict[str, FrozenTrial] = {}
    for t in trials:
        if t.state != TrialState.COMPLETE or t.user_attrs.get("tier") == TIER or \
                any(v > 0 for v in t.constraints.values()):
            continue
        code = t.user_attrs["layout"]
        if code not in best or ("promoted_from" in t.user_attrs and "promoted_from" not in best[code].user_attrs):
            best[code] = t
    return best


def first_round(trials: Sequence[FrozenTrial], front: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The front's layouts, then every baseline's, each once (see :func:`_unreplicated`)."""
    best = _unreplicated(trials)
    order = [t.user_attrs["layout"] for t in front]
    order += [t.user_attrs["layout"] for t in trials if "baseline" in t.user_attrs and t.user_attrs.get("tier") != TIER]
    return [best[code] for code in dict.fromkeys(order) if code in best]


def _attempted(trials: Sequence[FrozenTrial]) -> set[str]:
    """Layouts that have a replicated trial, complete or failed."""
    return {t.user_attrs.get("layout") for t in trials if t.user_attrs.get("tier") == TIER}


def _replicated(trials: Sequence[FrozenTrial]) -> dict[str, FrozenTrial]:
    return {t.user_attrs["layout"]: t for t in trials
            if t.user_attrs.get("tier") == TIER and t.state == TrialState.COMPLETE and t.values is not None}


def finalists(trials: Sequence[FrozenTrial], front: Sequence[FrozenTrial], seed: int, seeds: int) -> list[Finalist]:
    """The first round (:func:`first_round`), skipping layouts that already have a replicated trial."""
    done = _attempted(trials)
    picked = [t for t in first_round(trials, front) if t.user_attrs["layout"] not in done]
    return [Finalist(t, [seed + k for k in range(seeds)]) for t in picked]


def run_noise(replicated: Sequence[FrozenTrial], metrics: list[str]) -> list[float]:
    """A single run's standard deviation per objective, pooled over ``replicated`` trials: the root of the mean
    per-layout sample variance of their per-seed values (0 where no trial has a spread, e.g. exact memory)."""
    noise = []
    for metric in metrics:
        variances = [statistics.variance(values) for t in replicated
                     if len(values := ((t.user_attrs.get("replicates") or {}).get("metrics", {}).get(metric) or {})
                            .get("values") or []) > 1]
        noise.append(math.sqrt(statistics.fmean(variances)) if variances else 0.0)
    return noise


def in_reach(trials: Sequence[FrozenTrial], front: Sequence[FrozenTrial], metrics: list[str],
             directions: list[str], seed: int, seeds: int) -> list[Finalist]:
    """The second round: every unreplicated layout outside the first round whose single run, moved in its favour
    by :data:`NOISE_SE` standard deviations of its difference from a replicated mean (a single run's noise from
    :func:`run_noise` of the first round's replicates, times sqrt(1 + 1/seeds)), no replicated first-round trial
    dominates. Empty until every first-round layout is replicated or failed."""
    first = first_round(trials, front)
    done = _attempted(trials)
    if any(t.user_attrs["layout"] not in done for t in first):
        return []
    replicated = _replicated(trials)
    anchors = [replicated[t.user_attrs["layout"]] for t in first if t.user_attrs["layout"] in replicated]
    band = np.array([NOISE_SE * sd * math.sqrt(1 + 1 / seeds) for sd in run_noise(anchors, metrics)])
    sign = np.array([1.0 if d == "minimize" else -1.0 for d in directions])  # losses: lower is better
    anchor_loss = np.array([a.values for a in anchors], dtype=float).reshape(-1, len(sign)) * sign
    taken = {t.user_attrs["layout"] for t in first} | done
    tiered = any("promoted_from" in t.user_attrs for t in trials)  # then only second-tier values compare
    picked = []
    for layout, trial in _unreplicated(trials).items():
        if layout in taken or trial.values is None or (tiered and "promoted_from" not in trial.user_attrs):
            continue
        hopeful = np.asarray(trial.values, dtype=float) * sign - band
        # Non-domination rank 0 among the anchors and itself: no replicated finalist dominates the hopeful values.
        if non_domination_rank(np.vstack([anchor_loss, hopeful]))[-1] == 0:
            picked.append(trial)
    picked.sort(key=lambda t: t.number)
    return [Finalist(t, [seed + k for k in range(seeds)]) for t in picked]


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """Mean, standard error of the mean (None for one value) and the values."""
    values = [float(v) for v in values]
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "se": se, "values": values}


def replicated_trial(finalist: Finalist, metrics: list[str], probe_samples: int) -> tuple[dict[str, Any],
                                                                                          list[float] | None,
                                                                                          str | None]:
    """(user attrs, objective values or None, failure text or None) of a finished finalist: the means over the seeds
    that worked; a failure when fewer than two did (one run has no spread to report)."""
    parent = finalist.parent
    memory = parent.user_attrs.get("memory", {})
    ok = {seed: r for seed, r in finalist.records.items() if Failure.of(r) is None}
    failures = {seed: Failure.of(r).text for seed, r in finalist.records.items() if seed not in ok}
    per_metric: dict[str, dict[str, Any]] = {}
    names = sorted({name for r in ok.values() for name in r.get("metrics", {})} | set(metrics))
    for name in names:
        values = [({**memory, **r.get("metrics", {})}).get(name) for r in ok.values()]
        if values and all(v is not None and math.isfinite(float(v)) for v in values):
            per_metric[name] = summarise(values)
    attrs: dict[str, Any] = {
        "layout": parent.user_attrs["layout"], "memory": memory, "run": parent.user_attrs.get("run", {}),
        "tier": TIER, "replicate_of": parent.number,
        "replicates": {"seeds": sorted(ok), "probe_samples": probe_samples, "metrics": per_metric,
                       "failures": {str(k): v for k, v in failures.items()}},
        "metrics": {name: summary["mean"] for name, summary in per_metric.items()},
    }
    if "baseline" in parent.user_attrs:
        attrs["baseline"] = parent.user_attrs["baseline"]
    first = ok.get(min(ok)) if ok else None
    if first is not None:
        attrs.update({k: first[k] for k in ("probe_table", "layer_table") if k in first})
    missing = [m for m in metrics if m not in per_metric]
    if len(ok) < 2 or missing:
        reason = f"{len(ok)} of {len(finalist.seeds)} seeds worked" if len(ok) < 2 else \
            f"objective {', '.join(missing)} not finite in every seed"
        detail = "; ".join(f"seed {k}: {v}" for k, v in failures.items())
        text = Failure("exception", f"replicates: {reason}" + (f" ({detail})" if detail else "")).text
        attrs["failure"] = text
        return attrs, None, text
    return attrs, [per_metric[m]["mean"] for m in metrics], None


def standard_errors(trial: FrozenTrial, metrics: list[str]) -> list[float | None]:
    """The standard error of each objective of a trial: from its replicates (0 for an exact memory metric), else
    None (a single run has no spread)."""
    table = (trial.user_attrs.get("replicates") or {}).get("metrics", {})
    return [(table.get(m) or {}).get("se") for m in metrics]


def within_noise(member: FrozenTrial, others: Sequence[FrozenTrial], metrics: list[str],
                 directions: list[str]) -> list[int]:
    """Trials that could dominate ``member`` within noise: on every objective they are better than it, or worse by
    less than :data:`NOISE_SE` combined standard errors (a member without replicates has no noise estimate and is
    never marked)."""
    mine = standard_errors(member, metrics)
    if all(se is None for se in mine):
        return []
    found = []
    for other in others:
        if other.number == member.number or other.values is None:
            continue
        theirs = standard_errors(other, metrics)
        close = True
        for a, b, sa, sb, direction in zip(member.values, other.values, mine, theirs, directions):
            worse = (b - a) if direction == "minimize" else (a - b)  # > 0: the other is worse on this objective
            band = NOISE_SE * math.sqrt((sa or 0.0) ** 2 + (sb or 0.0) ** 2)
            if worse > band:
                close = False
                break
        if close and other.user_attrs.get("layout") != member.user_attrs.get("layout"):
            found.append(other.number)
    return found
