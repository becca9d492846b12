"""A study's trials as the driver and every report see them: counts by status, one typed row per trial (the
Parquet table, written with pyarrow; pandas optional), the objectives' names given to Optuna, the Pareto front and
the ranking by successive fronts.

Nothing here imports torch, so ``pareto``, ``show`` and ``list`` answer quickly.
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
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


def name_metrics(study: optuna.Study, metrics: list[str]) -> None:
    """Name the study's objectives (``study.set_metric_names``) so that optuna-dashboard, ``plot_pareto_front``
    and ``trials_dataframe`` say ``proxy_kl`` / ``probe_*`` / ``cache_bytes`` instead of "Objective 0"."""
    if study.metric_names == list(metrics):
        return
    with warnings.catch_warnings():  # experimental in Optuna 5 (since 3.2), and used here exactly as documented
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(metrics))


# ------------------------------------------------------------------------------------------------ the table
# Every column has one Arrow type whatever the trials hold, so two studies' tables concatenate (pyarrow, pandas,
# DuckDB, Polars) and an all-missing column is never Arrow ``null``. The per-layer, probe and loss tables are
# list<struct> columns in the trial's own row rather than side tables: the table stays one file (one name in the
# study folder, one atomic rewrite), a row never loses its sub-tables in a concatenation (a side table would need a
# key made of study and trial), and every reader flattens them (``pyarrow.compute.list_flatten``, pandas
# ``explode``, DuckDB ``UNNEST``). A plug-in's fields beyond the built-in ones go to ``extra`` (a JSON object).
LAYER_ROW = pa.struct([("layer", pa.int64()), ("mixer", pa.string()), ("relative_error", pa.float64()),
                       ("cosine", pa.float64()), ("finite", pa.bool_()), ("extra", pa.string())])
PROBE_ROW = pa.struct([("task", pa.string()), ("length", pa.int64()), ("samples", pa.int64()),
                       ("accuracy", pa.float64()), ("partial", pa.float64()), ("logprob", pa.float64()),
                       ("extra", pa.string())])
LOSS_ROW = pa.struct([("name", pa.string()), ("values", pa.list_(pa.float64()))])
TIMESTAMP = pa.timestamp("us", tz="UTC")
FIXED_COLUMNS: dict[str, pa.DataType] = {
    "study": pa.string(), "number": pa.int64(), "status": pa.string(), "layout": pa.string(),
    "layers": pa.list_(pa.string()), "ranks": pa.list_(pa.int64()), "baseline": pa.string(), "tier": pa.string(),
    "promoted_from": pa.int64(), "replicate_of": pa.int64(), "source": pa.string(), "feasible": pa.bool_(),
    "infeasible": pa.string(), "duplicate_of": pa.int64(), "failure": pa.string(), "retry_of": pa.int64(),
    "proposed_layout": pa.string(),
    "replicate_seeds": pa.list_(pa.int64()), "replicate_probe_samples": pa.int64(),
    "losses": pa.list_(LOSS_ROW), "layer_table": pa.list_(LAYER_ROW), "probe_table": pa.list_(PROBE_ROW),
    "details": pa.string(), "node": pa.string(), "host": pa.string(), "seed": pa.int64(),
    "hylo_version": pa.string(), "duration_s": pa.float64(), "datetime_start": TIMESTAMP,
    "datetime_complete": TIMESTAMP,
}
# Objective and metric columns sit between ``proposed_layout`` and ``replicate_seeds``, in this order.
_BEFORE_METRICS = list(FIXED_COLUMNS)[:list(FIXED_COLUMNS).index("replicate_seeds")]
PER_SEED = "_per_seed"  # <metric>_per_seed: a replicated trial's value for each seed, in replicate_seeds order
STANDARD_ERROR = "_se"  # <metric>_se: its standard error over the seeds


def column_type(name: str) -> pa.DataType:
    """The Arrow type of a column of ``trials.parquet``: the fixed columns as listed; exact counts (cache bytes,
    parameters) int64; per-seed replicate values list<double>; every other column (objectives, metrics,
    ``constraint:*``, ``time:*``, ``<metric>_se``, ratios) float64."""
    if name in FIXED_COLUMNS:
        return FIXED_COLUMNS[name]
    if name.endswith(PER_SEED):
        return pa.list_(pa.float64())
    base = name.split("@")[0]
    if base in ("cache_bytes", "teacher_cache_bytes", "params", "teacher_params"):
        return pa.int64()
    return pa.float64()


def trial_row(t: FrozenTrial, metrics: list[str], study_name: str | None = None) -> dict[str, Any]:
    """One record per trial, as ``trials.parquet`` holds it (types: :func:`column_type`). Objective columns
    hold Optuna's values (a replicated trial's: the means over seeds), else the memory metric of that name;
    datetimes are UTC (Optuna stores this machine's local time)."""
    attrs = t.user_attrs
    memory, run, result = attrs.get("memory") or {}, attrs.get("run") or {}, attrs.get("result") or {}
    values = dict(zip(metrics, t.values)) if t.values else {}
    tokens = attrs["layout"].split(",") if attrs.get("layout") else []
    row: dict[str, Any] = {
        "study": study_name, "number": t.number, "status": status_of(t), "layout": attrs.get("layout"),
        "layers": [token[0] for token in tokens] or None,
        "ranks": [int(token[1:]) if token[1:] else None for token in tokens] or None,
        "baseline": attrs.get("baseline"), "tier": attrs.get("tier"), "promoted_from": attrs.get("promoted_from"),
        "replicate_of": attrs.get("replicate_of"), "source": attrs.get("source"), "feasible": run.get("feasible"),
        "infeasible": attrs.get("infeasible"), "duplicate_of": attrs.get("duplicate_of"),
        # A completed retry carries its interrupted predecessor's mark (Optuna copies system attrs): not a failure.
        "failure": attrs.get("failure") or (t.system_attrs.get(INTERRUPTED_ATTR) if t.state == TrialState.FAIL
                                            else None),
        "retry_of": t.system_attrs.get("failed_trial"), "proposed_layout": run.get("proposed_layout"),
    }
    for metric in metrics:
        row[metric] = values.get(metric, memory.get(metric))
    for key in ("cache_bytes", "cache_ratio", "params", "params_ratio"):
        row.setdefault(key, memory.get(key))
    for key, value in (attrs.get("metrics") or {}).items():
        row.setdefault(key, value)
    replicates = attrs.get("replicates") or {}
    for metric in [*metrics, *(m for m in replicates.get("metrics") or {} if m not in metrics)]:
        stats = (replicates.get("metrics") or {}).get(metric) or {}
        row[metric + STANDARD_ERROR] = stats.get("se")
        row[metric + PER_SEED] = stats.get("values")
    for key, value in sorted(t.constraints.items()):
        row[f"constraint:{key}"] = value
    for key, value in (result.get("timings") or {}).items():
        row[f"time:{key}"] = value
    row.update(
        replicate_seeds=replicates.get("seeds"), replicate_probe_samples=replicates.get("probe_samples"),
        losses=None if attrs.get("losses") is None else [{"name": str(k), "values": v}
                                                         for k, v in attrs["losses"].items()],
        layer_table=_sub_rows(attrs.get("layer_table"), LAYER_ROW),
        probe_table=_sub_rows(attrs.get("probe_table"), PROBE_ROW),
        details=json.dumps(result["details"]) if result.get("details") is not None else None,
        node=result.get("node"), host=result.get("host"), seed=run.get("seed"), hylo_version=run.get("hylo_version"),
        duration_s=(t.datetime_complete - t.datetime_start).total_seconds()
        if t.datetime_complete and t.datetime_start else None,
        datetime_start=_utc(t.datetime_start), datetime_complete=_utc(t.datetime_complete),
    )
    return row


def _sub_rows(rows: list[dict[str, Any]] | None, row_type: pa.StructType) -> list[dict[str, Any]] | None:
    """A plug-in's table as rows of ``row_type``: its known fields typed, anything else (or a known field whose
    value does not fit the type) in ``extra`` as JSON. Missing stays null; an empty table stays empty."""
    if rows is None:
        return None
    known = {row_type.field(k).name: row_type.field(k).type for k in range(row_type.num_fields)}
    known.pop("extra")
    out = []
    for source in rows:
        item: dict[str, Any] = {}
        rest = {k: v for k, v in source.items() if k not in known}
        for name, kind in known.items():
            value = _fit(source.get(name), kind)
            if value is _MISFIT:
                rest[name] = source[name]
            else:
                item[name] = value
        item["extra"] = json.dumps(rest, default=str) if rest else None
        out.append(item)
    return out


_MISFIT = object()


def _fit(value: Any, kind: pa.DataType) -> Any:
    if value is None:
        return None
    try:
        if pa.types.is_boolean(kind):
            return bool(value) if isinstance(value, (bool, np.bool_)) else _MISFIT
        if pa.types.is_integer(kind):
            return int(value) if float(value) == int(value) else _MISFIT
        if pa.types.is_floating(kind):
            return float(value)
        return value if isinstance(value, str) else _MISFIT
    except (TypeError, ValueError, OverflowError):
        return _MISFIT


def _utc(moment: datetime | None) -> datetime | None:
    return moment.astimezone(timezone.utc) if moment is not None else None


def trials_table(study: optuna.Study, metrics: list[str]) -> pa.Table:
    """The study's trials as an Arrow table with an explicit schema (:func:`column_type`): the fixed columns, then
    the objectives, the memory and plug-in metrics, the replicate columns, constraints and timings in the order
    the trials first hold them. The schema metadata names the objectives and their directions."""
    rows = [trial_row(t, metrics, study.study_name) for t in study.get_trials(deepcopy=False)]
    names = list(_BEFORE_METRICS)
    for column in (*metrics, *(c for row in rows for c in row)):
        if column not in names and column not in FIXED_COLUMNS:
            names.append(column)
    names += [c for c in FIXED_COLUMNS if c not in names]
    directions = [d.name.lower() for d in study.directions]
    schema = pa.schema([pa.field(name, column_type(name)) for name in names],
                       metadata={"hylo:objectives": json.dumps(dict(zip(metrics, directions)))})
    return pa.Table.from_pylist([{k: _cell(v, schema.field(k).type) for k, v in row.items()} for row in rows],
                                schema=schema)


def _cell(value: Any, kind: pa.DataType) -> Any:
    """Exact counts arrive as floats when they are objectives (Optuna's values); they are integers."""
    if pa.types.is_int64(kind) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def trials_frame(study: optuna.Study, metrics: list[str]) -> Any:
    """:func:`trials_table` as a pandas DataFrame (needs pandas: ``pip install 'hylo-search[pandas]'``);
    datetimes as ``datetime64[us, UTC]``, the nested tables as lists of dicts."""
    try:
        import pandas  # noqa: F401  (optional: the table itself is written with pyarrow alone)
    except ImportError:
        raise RuntimeError("trials_frame needs pandas: pip install 'hylo-search[pandas]' (or read trials.parquet "
                           "with pyarrow)") from None
    return trials_table(study, metrics).to_pandas()


def write_trials_table(study: optuna.Study, path: Path, metrics: list[str]) -> Path:
    """Rewrite the Parquet table from the storage (the source of truth), atomically."""
    table = trials_table(study, metrics)
    with paths.atomic_path(path) as tmp:
        pq.write_table(table, tmp)
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


