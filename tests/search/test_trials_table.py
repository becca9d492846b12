"""The trials table (``trials.parquet``): one Arrow type per column whatever the trials hold (no ``null`` columns),
UTC timestamps, nested tables as list<struct>, replicate columns; two studies' tables concatenate in pyarrow and in
pandas. And the study's objectives carry our names into Optuna (``set_metric_names``)."""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path

import optuna
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from hylo_search.search.trials import column_type, write_trials_table

from .helpers import write_study

DISTRIBUTIONS = {"layer_00": CategoricalDistribution(["A", "G", "L8"]),
                 "layer_01": CategoricalDistribution(["A", "G", "L8"])}
START = dt.datetime(2026, 12, 6, 5, 0, 0)


def _trial(state: TrialState, layout: str, values: list[float] | None = None, **attrs) -> optuna.trial.FrozenTrial:
    """A trial as the driver stores one: layout, memory, run, result and the plug-in tables in user attrs."""
    tokens = layout.split(",")
    cache = 1000 * sum(4 if t == "A" else 1 for t in tokens)
    user = {"layout": layout, "memory": {"cache_bytes": cache, "cache_ratio": cache / 8000, "params": 77_000,
                                         "params_ratio": 0.98},
            "run": {"seed": 0, "hylo_version": "0.1.0", "feasible": True}, **attrs}
    if state == TrialState.COMPLETE:
        user.update(
            metrics={"proxy_kl": values[0], "proxy_loss": 5.5, "probe_accuracy@512": 0.25},
            losses={"align": [1.5, 1.25], "distill": [0.5]},
            layer_table=[{"layer": 0, "mixer": tokens[0], "relative_error": 0.5, "cosine": 0.75, "finite": True,
                          "grad_norm": 2.0}],  # a plug-in's own field: kept in ``extra``
            probe_table=[{"task": "niah_single_1", "length": 512, "samples": 4, "accuracy": 0.25, "partial": 0.5,
                          "logprob": -1.5}],
            result={"node": "local:vm", "host": "vm", "timings": {"proxy_s": 1.5}, "details": {"recipe": "x"}})
    trial = create_trial(state=state, values=values, params={f"layer_{k:02d}": t for k, t in enumerate(tokens)},
                         distributions=DISTRIBUTIONS, user_attrs=user, constraints={"cache_bytes@512": cache - 6000.0})
    trial.datetime_start, trial.datetime_complete = START, START + dt.timedelta(seconds=7.5)
    return trial


def _study(name: str, metrics: list[str], directions: list[str]) -> optuna.Study:
    study = optuna.create_study(study_name=name, directions=directions)
    kl = {"proxy_kl": 0.5, "probe_accuracy": 0.25}
    values = lambda layout: [kl.get(m, 1000.0 * (4 + (1 if "G" in layout else 4))) for m in metrics]  # noqa: E731
    study.add_trial(_trial(TrialState.COMPLETE, "A,A", values("A,A"), baseline="teacher", tier="recipe"))
    study.add_trial(_trial(TrialState.COMPLETE, "A,G", values("A,G"), tier="recipe"))
    study.add_trial(_trial(TrialState.FAIL, "G,G", failure="oom: CUDA out of memory [tried 2 GiB]"))
    study.add_trial(_trial(TrialState.PRUNED, "L8,L8", infeasible="cache_bytes@512 over budget"))
    study.add_trial(_trial(TrialState.COMPLETE, "A,G", values("A,G"), tier="replicated", replicate_of=1,
                           replicates={"seeds": [0, 1, 2], "probe_samples": 64,
                                       "metrics": {m: {"mean": v, "se": 0.125, "values": [v - 0.25, v, v + 0.25]}
                                                   for m, v in zip(metrics, values("A,G"))}}))
    return study


@pytest.fixture
def two_tables(tmp_path: Path) -> tuple[pa.Table, pa.Table, Path, Path]:
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_trials_table(_study("a", ["proxy_kl", "cache_bytes"], ["minimize", "minimize"]), first,
                       ["proxy_kl", "cache_bytes"])
    three = ["proxy_kl", "probe_accuracy", "cache_bytes"]
    write_trials_table(_study("b", three, ["minimize", "maximize", "minimize"]), second, three)
    return pq.read_table(first), pq.read_table(second), first, second


def test_every_column_is_typed_and_nothing_is_null_typed(two_tables):
    for table in two_tables[:2]:
        assert not [f.name for f in table.schema if pa.types.is_null(f.type)]
        assert all(f.type == column_type(f.name) for f in table.schema)
        assert table.schema.field("datetime_start").type == pa.timestamp("us", tz="UTC")
        # Columns no trial of these studies fills are still typed.
        assert table.schema.field("promoted_from").type == pa.int64()
        assert table.schema.field("duplicate_of").type == pa.int64()
        assert table.schema.field("cache_bytes").type == pa.int64()
    first = two_tables[0]
    assert json.loads(first.schema.metadata[b"hylo:objectives"]) == {"proxy_kl": "minimize",
                                                                     "cache_bytes": "minimize"}


def test_rows_hold_nested_tables_replicates_and_failures_as_given(two_tables):
    rows = {r["number"]: r for r in two_tables[1].to_pylist()}
    teacher = rows[0]
    assert teacher["study"] == "b" and teacher["baseline"] == "teacher" and teacher["cache_bytes"] == 8000
    assert teacher["layers"] == ["A", "A"] and teacher["ranks"] == [None, None]
    assert teacher["losses"] == [{"name": "align", "values": [1.5, 1.25]}, {"name": "distill", "values": [0.5]}]
    assert teacher["layer_table"] == [{"layer": 0, "mixer": "A", "relative_error": 0.5, "cosine": 0.75,
                                       "finite": True, "extra": '{"grad_norm": 2.0}'}]
    assert teacher["probe_table"] == [{"task": "niah_single_1", "length": 512, "samples": 4, "accuracy": 0.25,
                                       "partial": 0.5, "logprob": -1.5, "extra": None}]
    assert teacher["datetime_start"] == START.astimezone(dt.timezone.utc) and teacher["duration_s"] == 7.5
    assert teacher["constraint:cache_bytes@512"] == 2000.0 and teacher["time:proxy_s"] == 1.5
    assert teacher["proxy_kl_se"] is None and teacher["replicate_seeds"] is None
    assert rows[2]["status"] == "fail" and rows[2]["failure"] == "oom: CUDA out of memory [tried 2 GiB]"
    assert rows[3]["status"] == "infeasible" and rows[3]["proxy_kl"] is None and rows[3]["cache_bytes"] == 2000
    replicated = rows[4]
    assert replicated["tier"] == "replicated" and replicated["replicate_of"] == 1
    assert replicated["replicate_seeds"] == [0, 1, 2] and replicated["replicate_probe_samples"] == 64
    assert replicated["proxy_kl_se"] == 0.125 and replicated["proxy_kl_per_seed"] == [0.25, 0.5, 0.75]
    assert replicated["probe_accuracy_per_seed"] == [0.0, 0.25, 0.5]


def test_two_studies_concatenate_in_pyarrow(two_tables):
    first, second, _, _ = two_tables
    combined = pa.concat_tables([first, second], promote_options="default")  # b has one more objective
    assert combined.num_rows == first.num_rows + second.num_rows
    assert combined.schema.field("probe_accuracy").type == pa.float64()
    assert combined.column("probe_accuracy").to_pylist()[:first.num_rows] == [None] * first.num_rows
    assert not [f.name for f in combined.schema if pa.types.is_null(f.type)]
    shared = [name for name in first.column_names if name in second.schema.names]
    assert shared == first.column_names  # the narrower study's columns all exist, with the same types, in b
    assert pa.concat_tables([first, second.select(shared)]).num_rows == combined.num_rows  # no promotion needed
    exploded = pc.list_flatten(combined.column("probe_table"))
    assert exploded.type == pa.struct([("task", pa.string()), ("length", pa.int64()), ("samples", pa.int64()),
                                       ("accuracy", pa.float64()), ("partial", pa.float64()),
                                       ("logprob", pa.float64()), ("extra", pa.string())])


def test_two_studies_concatenate_in_pandas(two_tables):
    _, _, first, second = two_tables
    combined = pd.concat([pd.read_parquet(first), pd.read_parquet(second)], ignore_index=True)
    assert list(combined.groupby("study").size().items()) == [("a", 5), ("b", 5)]
    assert str(combined["datetime_start"].dtype) == "datetime64[us, UTC]"
    assert combined["proxy_kl"].dtype == "float64"
    probes = combined.explode("probe_table").dropna(subset=["probe_table"])
    assert {row["task"] for row in probes["probe_table"]} == {"niah_single_1"}
    back = pa.Table.from_pandas(combined, preserve_index=False)  # and back to Arrow, still typed
    assert back.schema.field("replicate_seeds").type == pa.list_(pa.int64())


def test_metric_names_reach_optuna_and_its_plots(tmp_path: Path):
    from hylo_search.search.run import _open_study, options_for
    from hylo_search.study import load_study

    loaded = load_study(write_study(tmp_path, objectives=[{"metric": "proxy_kl", "direction": "minimize"},
                                                          {"metric": "probe_accuracy", "direction": "maximize"},
                                                          {"metric": "cache_bytes", "direction": "minimize"}]))
    options = options_for(loaded, out=str(tmp_path / "run"))
    options.folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error", optuna.exceptions.ExperimentalWarning)  # name_metrics keeps Optuna quiet
        study = _open_study(loaded, options)
        _open_study(loaded, options)  # reopening (a resumed study) keeps the names
    study.add_trial(create_trial(values=[0.5, 0.25, 1000.0]))
    study.add_trial(create_trial(values=[0.25, 0.125, 2000.0]))
    reopened = optuna.load_study(study_name=loaded.name, storage=options.storage)
    assert reopened.metric_names == ["proxy_kl", "probe_accuracy", "cache_bytes"]
    assert list(reopened.trials_dataframe(multi_index=True)["values"].columns) == reopened.metric_names
    figure = optuna.visualization.plot_pareto_front(reopened)
    scene = figure.layout.scene
    assert [scene.xaxis.title.text, scene.yaxis.title.text, scene.zaxis.title.text] == reopened.metric_names

