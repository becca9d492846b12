"""A study's trials as the driver and every report see them: counts by status, one flat row per trial (the
Parquet table), the Pareto front and the ranking by successive fronts.

Nothing here imports torch, so ``pareto``, ``show`` and ``list`` answer quickly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from .. import paths
from .optuna_compat import non_domination_rank, pareto_front_of

INTERRUPTED_ATTR = "hylo:interrupted"


def trial_counts(study: optuna.Study) -> dict[str, int]:
    """``complete``, ``failed`` (a failure of the trial itself), ``interrupted`` (its driver died or its worker was
    lost; retried), ``infeasible``, ``duplicate``, ``waiting``, ``running``, ``counted`` (= complete + failed),
    ``promoted`` (the counted trials that are second-tier results of a two-tier study) and ``replicated`` (the
    counted trials that are a finalist's replicates)."""
    counts = dict.fromkeys(("complete", "failed", "interrupted", "infeasible", "duplicate", "waiting", "running",
                            "promoted", "replicated"), 0)
    for t in study.get_trials(deepcopy=False):
        if "promoted_from" in t.user_attrs:
            counts["promoted"] += 1
        if "replicate_of" in t.user_attrs:
            counts["replicated"] += 1
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif t.state == TrialState.FAIL:
            counts["failed" if "failure" in t.user_attrs else "interrupted"] += 1
        elif t.state == TrialState.PRUNED:
            counts["duplicate" if "duplicate_of" in t.user_attrs else "infeasible"] += 1
        elif t.state == TrialState.WAITING:
            counts["waiting"] += 1
        else:
            counts["running"] += 1
    counts["counted"] = counts["complete"] + counts["failed"]
    return counts


def status_of(t: FrozenTrial) -> str:
    if t.state == TrialState.PRUNED:
        return "duplicate" if "duplicate_of" in t.user_attrs else "infeasible"
    if t.state == TrialState.FAIL and "failure" not in t.user_attrs:
        return "interrupted"
    return t.state.name.lower()


def trial_row(t: FrozenTrial, metrics: list[str]) -> dict[str, Any]:
    """One flat record per trial (what ``trials.parquet`` holds); nested tables are JSON strings."""
    attrs = t.user_attrs
    memory, run, result = attrs.get("memory", {}), attrs.get("run", {}), attrs.get("result", {})
    values = dict(zip(metrics, t.values)) if t.values else {}
    tokens = attrs["layout"].split(",") if attrs.get("layout") else []
    row: dict[str, Any] = {
        "number": t.number, "status": status_of(t), "layout": attrs.get("layout"),
        "layers": [token[0] for token in tokens] or None,
        "ranks": [int(token[1:]) if token[1:] else None for token in tokens] or None,
        "baseline": attrs.get("baseline"), "tier": attrs.get("tier"), "promoted_from": attrs.get("promoted_from"),
        "source": attrs.get("source"), "feasible": run.get("feasible"), "infeasible": attrs.get("infeasible"),
        "duplicate_of": attrs.get("duplicate_of"),
        "failure": attrs.get("failure") or (t.system_attrs.get(INTERRUPTED_ATTR)
                                            if t.state == TrialState.FAIL else None),
        "retry_of": t.system_attrs.get("failed_trial"), "proposed_layout": run.get("proposed_layout"),
    }
    for metric in metrics:
        row[metric] = values.get(metric, memory.get(metric))
    for key in ("cache_bytes", "cache_ratio", "params", "params_ratio"):
        row.setdefault(key, memory.get(key))
    for key, value in sorted(t.constraints.items()):
        row[f"constraint:{key}"] = value
    for key, value in (attrs.get("metrics") or {}).items():
        row.setdefault(key, value)
    for key, value in (result.get("timings") or {}).items():
        row[f"time:{key}"] = value
    row.update(
        losses=json.dumps(attrs.get("losses")), layer_table=json.dumps(attrs.get("layer_table")),
        probe_table=json.dumps(attrs.get("probe_table")), details=json.dumps(result.get("details")),
        node=result.get("node"), host=result.get("host"), seed=run.get("seed"), hylo_version=run.get("hylo_version"),
        duration_s=(t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start else None,
        datetime_start=t.datetime_start.isoformat() if t.datetime_start else None,
        datetime_complete=t.datetime_complete.isoformat() if t.datetime_complete else None,
    )
    return row


def trials_frame(study: optuna.Study, metrics: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame([trial_row(t, metrics) for t in study.get_trials(deepcopy=False)])


def write_trials_table(study: optuna.Study, path: Path, metrics: list[str]) -> Path:
    """Rewrite the Parquet table from the storage (the source of truth), atomically."""
    frame = trials_frame(study, metrics)
    with paths.atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


# ------------------------------------------------------------------------------------------------ the front
def pareto_front(study: optuna.Study, replicated: bool = True) -> list[FrozenTrial]:
    """The feasible non-dominated trials (constraints considered as Optuna's ``best_trials`` does), by trial
    number, over the highest tier present: the finalists' replicated trials (means over seeds), else a two-tier
    study's second-tier results, else every trial (numbers from different tiers do not compare).
    ``replicated=False`` leaves the replicated trials out (the front the finalists are drawn from)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for key in (("replicate_of", "promoted_from") if replicated else ("promoted_from",)):
        tier = [t for t in complete if key in t.user_attrs]
        if tier:
            return sorted(pareto_front_of(tier, study.directions), key=lambda t: t.number)
    first = [t for t in complete if "replicate_of" not in t.user_attrs]
    return sorted(pareto_front_of(first, study.directions), key=lambda t: t.number)


def ranked_trials(trials: list[FrozenTrial], directions: list[Any]) -> list[FrozenTrial]:
    """Completed trials best first: by non-domination rank (successive Pareto fronts, Optuna's fast
    non-dominated sort as NSGA-II uses it), then by the first objective, then by number."""
    if not trials:
        return []
    sign = np.array([1.0 if d in (StudyDirection.MINIMIZE, "minimize") else -1.0 for d in directions])
    loss = np.array([t.values for t in trials], dtype=float) * sign
    ranks = non_domination_rank(loss)
    order = sorted(range(len(trials)), key=lambda k: (ranks[k], loss[k, 0], trials[k].number))
    return [trials[k] for k in order]


