"""The driver in-process: records, exact constraints, the front, failures, resume, ablation grids, the layer cache."""

from __future__ import annotations

import math

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

from hylo_model import upcycle
from hylo_search.errors import UsageError
from hylo_search.search.run import options_for, run_study
from hylo_search.search.storage import DriverLock, open_study_folder
from hylo_search.search.trials import INTERRUPTED_ATTR, pareto_front, trial_counts
from hylo_search.study import load_study
from hylo_search.worker.converted import ConvertedLayers, teacher_fingerprint
from hylo_search.worker.runtime import StudyRuntime

from .helpers import brute_force_front, write_study

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run(path, out, **kwargs):
    loaded = load_study(path)
    summary = run_study(loaded, options_for(loaded, out=str(out), **kwargs))
    return loaded, summary, open_study_folder(str(out)).study


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engine")
    path = write_study(folder, trials=7)
    loaded, summary, study = _run(path, folder / "run")
    return loaded, summary, study, folder


def test_study_reaches_its_count_with_full_records(finished):
    loaded, summary, study, folder = finished
    counts = trial_counts(study)
    assert counts["counted"] == 7 and counts["complete"] == 7 and counts["running"] == 0
    assert summary.stop_reason == "reached 7 trials"
    for t in study.trials:
        attrs = t.user_attrs
        assert attrs["layout"] and attrs["run"]["seed"] == 0 and attrs["run"]["hylo_version"]
        assert set(t.constraints) == {"count:attention+mla>=1", "count:attention+mla<=3", "cache_bytes@512"}
        assert attrs["run"]["constraints"] == t.constraints
        assert attrs["memory"]["cache_bytes"] == loaded.space.costs.layout_cache(attrs["layout"].split(","), 512)
        if t.state == TrialState.COMPLETE:
            assert {"result", "losses", "layer_table", "probe_table", "metrics"} <= set(attrs)
            assert {"timings", "node", "host", "cache"} <= set(attrs["result"])
            assert attrs["probe_table"][0]["task"] == "teacher_agreement"
    table = pd.read_parquet(folder / "run" / "trials.parquet")
    assert sorted(table["number"]) == [t.number for t in study.trials]
    assert {"layout", "proxy_kl", "cache_bytes", "constraint:cache_bytes@512", "failure", "time:proxy_s",
            "node"} <= set(table.columns)


def test_trained_trials_never_violate_constraints_and_infeasible_never_train(finished):
    loaded, _, study, _ = finished
    assert any(t.state == TrialState.PRUNED and "infeasible" in t.user_attrs for t in study.trials)
    for t in study.trials:
        trained = "result" in t.user_attrs
        feasible = loaded.space.is_feasible(t.user_attrs["layout"].split(","))  # recomputed, not read back
        assert feasible == all(v <= 0 for v in t.constraints.values())
        if trained:
            assert feasible
        if not feasible:
            assert not trained and t.state == TrialState.PRUNED


def test_front_is_the_feasible_non_dominated_set(finished):
    loaded, summary, study, _ = finished
    want = brute_force_front(study.trials, loaded.directions)
    assert [t.number for t in pareto_front(study)] == want == summary.front
    assert want


def test_baselines_are_enqueued_first_and_once(finished):
    _, _, study, _ = finished
    names = [t.user_attrs.get("baseline") for t in study.trials]
    assert names[0] == "teacher" and sum(n is not None for n in names) >= 3
    assert len([n for n in names if n]) == len({n for n in names if n})


def test_failures_are_recorded_and_the_study_goes_on(tmp_path):
    path = write_study(tmp_path, name="flaky", trials=6, proxy={
        "kind": "tests.search.plugins:FlakyProxy",
        "options": {"fail": ["G,G,G,A"], "nan": ["A,G,G,G"]}})
    _, _, study = _run(path, tmp_path / "run")
    by_layout = {t.user_attrs["layout"]: t for t in study.trials}
    failed, nan = by_layout["G,G,G,A"], by_layout["A,G,G,G"]
    assert failed.state == nan.state == TrialState.FAIL
    assert failed.user_attrs["failure"] == "exception: RuntimeError: injected failure for G,G,G,A"
    assert "Traceback" in failed.user_attrs["result"]["traceback"]
    assert nan.user_attrs["failure"] == "nan: proxy_kl not finite"
    counts = trial_counts(study)
    assert counts["counted"] == 6 and counts["failed"] == 2 and counts["complete"] == 4


def test_a_setup_problem_stops_the_study_after_three_identical_failures(tmp_path):
    path = write_study(tmp_path, name="broken", trials=6,
                       proxy={"kind": "tests.search.plugins:FlakyProxy", "options": {"fail_all": True}})
    _, summary, study = _run(path, tmp_path / "run")
    assert summary.stop_reason == ("stopped: the first 3 trials failed the same way "
                                   "(exception: RuntimeError: injected failure)")
    assert trial_counts(study)["failed"] == 3 and trial_counts(study)["complete"] == 0


def test_resume_fails_and_retries_what_a_dead_driver_left_running(tmp_path):
    path = write_study(tmp_path, trials=3)
    loaded, _, study = _run(path, tmp_path / "run")
    before = {t.number: (t.user_attrs["layout"], t.values) for t in study.trials if t.state == TrialState.COMPLETE}
    # A driver that died mid-trial leaves a RUNNING trial behind.
    orphan = study.ask()
    tokens = loaded.space.suggest(orphan)
    orphan.set_user_attr("layout", ",".join(tokens))
    _, summary, study = _run(path, tmp_path / "run", trials=5)
    trials = study.trials
    assert trials[orphan.number].state == TrialState.FAIL and INTERRUPTED_ATTR in trials[orphan.number].system_attrs
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retries) == 1 and retries[0].params == trials[orphan.number].params
    for number, (layout, values) in before.items():
        assert trials[number].state == TrialState.COMPLETE and trials[number].user_attrs["layout"] == layout
        assert trials[number].values == values
    complete = [t.user_attrs["layout"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(set(complete)) and trial_counts(study)["counted"] == 5


def test_the_training_recipe_and_ruler_probes_plug_in(tmp_path):
    """The real proxy (hylo_model.train.run_recipe with the proxy_tiny recipe) and the real RULER-style probes
    behind the same interface as the stand-ins."""
    path = write_study(tmp_path, name="real", trials=2, proxy={"kind": "recipe", "recipe": "proxy_tiny"},
                       probes={"kind": "ruler", "tasks": ["niah_single_1"], "lengths": [1024], "samples": 1},
                       objectives=[{"metric": "proxy_kl", "direction": "minimize"},
                                   {"metric": "probe_accuracy", "direction": "maximize"}])
    loaded, _, study = _run(path, tmp_path / "run")
    assert (loaded.proxy_kind, loaded.probe_kind) == ("recipe", "ruler")
    trained = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(trained) == 2
    for t in trained:
        assert set(t.user_attrs["losses"]) == {"align", "distill"}
        stages = t.user_attrs["result"]["details"]["stages"]
        assert [s["kind"] for s in stages] == ["align", "distill"] and stages[-1]["kl_after"] == t.values[0]
        (row,) = t.user_attrs["probe_table"]
        assert {k: row[k] for k in ("task", "length", "samples", "accuracy")} == {
            "task": "niah_single_1", "length": 1024, "samples": 1, "accuracy": t.values[1]}
        # The fast scorer's continuous scores beside it: the answer's mean per-token log-likelihood (<= 0) and
        # the fraction of its tokens that are the argmax.
        metrics = t.user_attrs["metrics"]
        assert row["logprob"] == metrics["probe_logprob"] == metrics["probe_logprob@1024"] <= 0
        assert row["partial"] == metrics["probe_partial"] == metrics["probe_partial@1024"]
        assert row["accuracy"] <= row["partial"]  # every answer token right is a whole right answer


def test_changed_definition_and_second_driver_are_refused(tmp_path):
    path = write_study(tmp_path, trials=1)
    _run(path, tmp_path / "run")
    changed = write_study(tmp_path, trials=1, seed=1)
    with pytest.raises(UsageError, match="was created from a different definition"):
        _run(changed, tmp_path / "run")
    lock = DriverLock(tmp_path / "run")
    lock.acquire()
    try:
        assert DriverLock.is_held(tmp_path / "run")
        with pytest.raises(UsageError, match="another driver .* is running this study"):
            _run(path, tmp_path / "run")
    finally:
        lock.release()


def test_ablation_grid_runs_exhaustively(tmp_path):
    path = write_study(tmp_path, name="abl", trials=50, replace={"sampler": {"name": "grid"}}, space={
        "ablation": {"placement": ["uniform", "end", "start"], "keep": ["attention", "mla"], "n_keep": [1],
                     "linear": ["gdn"], "mla_rank": [8]}})
    loaded, summary, study = _run(path, tmp_path / "run")
    assert summary.stop_reason == "the search space is exhausted"
    layouts = {t.user_attrs["layout"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert layouts == {"G,G,G,A", "A,G,G,G", "G,G,G,L8", "L8,G,G,G"}  # uniform == end for one kept layer


def test_brute_force_visits_every_layout_once(tmp_path):
    path = write_study(tmp_path, name="bf", trials=50, replace={"sampler": {"name": "brute_force"}},
                       space={"mixers": ["attention", "gdn"], "mla_ranks": [], "fixed": {0: "G", 1: "G"}})
    loaded, summary, study = _run(path, tmp_path / "run")
    assert summary.stop_reason == "the search space is exhausted"
    seen = sorted(t.user_attrs["layout"] for t in study.trials)
    assert seen == ["G,G,A,A", "G,G,A,G", "G,G,G,A", "G,G,G,G"]
    trained = {t.user_attrs["layout"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert trained == {s for s in seen if loaded.space.is_feasible(s.split(","))} == set(seen) - {"G,G,G,G"}


def test_layer_cache_reuses_conversions(tmp_path):
    loaded = load_study(write_study(tmp_path))
    runtime = StudyRuntime(loaded.resolved(), tmp_path / "run")
    teacher, options = runtime.teacher, loaded.definition.upcycle.options()
    cache = ConvertedLayers(tmp_path / "layers", teacher_fingerprint(teacher), options, seed=0)
    first, stats = cache.build(teacher, ["L8", "G", "A", "G"])
    assert stats == {"layer_cache_hits": 0, "layer_cache_misses": 3}
    fresh = upcycle(teacher, "L8,G,A,G", seed=0, **options)
    again, stats = cache.build(teacher, ["L8", "G", "A", "G"])
    assert stats == {"layer_cache_hits": 3, "layer_cache_misses": 0}
    for name, tensor in fresh.state_dict().items():
        assert torch.equal(first.state_dict()[name], tensor), name
        assert torch.equal(again.state_dict()[name], tensor), name
    _, stats = cache.build(teacher, ["L8", "A", "G", "G"])  # layer 0 and 3 converted before, layer 2 not
    assert stats == {"layer_cache_hits": 2, "layer_cache_misses": 1}
    ids = runtime.heldout
    kl, ce = runtime.heldout_scores(again)
    assert math.isfinite(kl) and kl > 0 and math.isfinite(ce)
    assert runtime.heldout_scores(upcycle(teacher, "A,A,A,A", **options))[0] < 1e-6
    assert ids.shape == (4, 48)
