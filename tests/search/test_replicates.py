"""Replicates: the front and every baseline rescored with several seeds; objectives as mean and standard error;
the front taken over the replicated trials; marks for members within noise; resumable."""

from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

from hylo_search.cli import main
from hylo_search.results.compare import compare_runs
from hylo_search.results.front import format_front, front_report
from hylo_search.scoring import proxy_kinds
from hylo_search.scoring.api import TrialContext
from hylo_search.search import replicates
from hylo_search.search.replicates import TIER, summarise, within_noise
from hylo_search.search.run import options_for, run_study
from hylo_search.search.storage import open_study_folder
from hylo_search.search.trials import pareto_front, trial_counts
from hylo_search.study import load_study
from hylo_search.worker.runtime import StudyRuntime

from .helpers import brute_force_front, write_study

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("replicates")
    path = write_study(folder, trials=6, proxy={"kind": "tests.search.plugins:NoisyProxy", "options": {"noise": 0.2}},
                       replicates={"seeds": 3, "probe_samples": 3})
    loaded = load_study(path)
    summary = run_study(loaded, options_for(loaded, out=str(folder / "run")))
    return loaded, summary, open_study_folder(str(folder / "run")), folder


def test_every_finalist_is_replicated_once_with_three_seeds(replicated):
    loaded, summary, handle, _ = replicated
    trials = handle.study.get_trials(deepcopy=False)
    first = [t for t in trials if t.state == TrialState.COMPLETE and "replicate_of" not in t.user_attrs]
    reps = [t for t in trials if t.user_attrs.get("tier") == TIER]
    front_layouts = {t.user_attrs["layout"] for t in brute_force_front(first, loaded.directions)
                     for t in [trials[t]]}
    baseline_layouts = {t.user_attrs["layout"] for t in first if "baseline" in t.user_attrs}
    feasible = {t.user_attrs["layout"] for t in first if all(v <= 0 for v in t.constraints.values())}
    first_round = (front_layouts | baseline_layouts) & feasible
    assert sorted(t.user_attrs["layout"] for t in reps) == sorted(first_round | _second_round(loaded, first, reps,
                                                                                              first_round))
    for t in reps:
        assert t.state == TrialState.COMPLETE and t.user_attrs["replicates"]["seeds"] == [0, 1, 2]
        parent = trials[t.user_attrs["replicate_of"]]
        assert parent.user_attrs["layout"] == t.user_attrs["layout"] and t.params == parent.params
    counts = trial_counts(handle.study)
    assert counts["replicated"] == len(reps) and counts["counted"] - counts["replicated"] == 6
    assert summary.stop_reason == f"reached 6 trials; {len(reps)} finalists replicated over 3 seeds"


def _second_round(loaded, first, reps, first_round):
    """The racing round, written from its definition: a single run's noise per objective pooled over the first
    round's replicates; a layout joins when, moved 2 x noise x sqrt(1 + 1/3) in its favour, no first-round
    replicate dominates it."""
    anchors = [t for t in reps if t.user_attrs["layout"] in first_round]
    noise = [math.sqrt(statistics.fmean(statistics.variance(t.user_attrs["replicates"]["metrics"][m]["values"])
                                        for t in anchors)) for m in loaded.metrics]
    sign = [1 if d == "minimize" else -1 for d in loaded.directions]
    joined = set()
    for t in sorted(first, key=lambda t: t.number):
        layout = t.user_attrs["layout"]
        if layout in first_round or layout in joined or any(v > 0 for v in t.constraints.values()):
            continue
        hopeful = [s * v - 2 * n * math.sqrt(1 + 1 / 3) for s, v, n in zip(sign, t.values, noise)]
        if not any(all(s * a <= h for s, a, h in zip(sign, r.values, hopeful)) and
                   any(s * a < h for s, a, h in zip(sign, r.values, hopeful)) for r in anchors):
            joined.add(layout)
    return joined


def test_objectives_are_means_with_standard_errors(replicated):
    loaded, _, handle, _ = replicated
    for t in handle.study.get_trials(deepcopy=False):
        if t.user_attrs.get("tier") != TIER:
            continue
        table = t.user_attrs["replicates"]["metrics"]
        for metric, value in zip(loaded.metrics, t.values):
            values = table[metric]["values"]
            assert len(values) == 3 and value == statistics.fmean(values)
            assert table[metric]["se"] == pytest.approx(statistics.stdev(values) / math.sqrt(3), abs=1e-15)
        assert table["cache_bytes"]["se"] == 0  # exact: the same at every seed
        assert table["proxy_kl"]["se"] > 0  # the seeds differ (the proxy's noise)


def test_the_front_is_taken_over_the_replicated_trials(replicated):
    loaded, _, handle, _ = replicated
    front = pareto_front(handle.study)
    reps = [t for t in handle.study.get_trials(deepcopy=False) if t.user_attrs.get("tier") == TIER]
    assert front and all(t.user_attrs.get("tier") == TIER for t in front)
    assert sorted(t.number for t in front) == brute_force_front(reps, loaded.directions)


def test_the_front_table_shows_plus_minus_and_baselines(replicated):
    _, _, handle, _ = replicated
    report = front_report(handle)
    text = format_front(report, "table")
    assert "means ± standard error over 3 seeds" in text and " ± " in text
    assert all(row["seeds"] == 3 and row["proxy_kl_se"] > 0 for row in report["front"])
    assert {b["standing"] for b in report["baselines"]} <= {"front", "dominated", "infeasible"}


def test_a_rerun_replicates_nothing_again(replicated):
    loaded, _, handle, folder = replicated
    before = len(handle.study.trials)
    summary = run_study(loaded, options_for(loaded, out=str(folder / "run")))
    assert len(open_study_folder(str(folder / "run")).study.trials) == before
    assert summary.counts["replicated"] == trial_counts(handle.study)["replicated"]


def _trial(number: int, values: list[float], ses: list[float]) -> FrozenTrial:
    metrics = {m: {"mean": v, "se": s, "values": [v]} for m, v, s in zip(("a", "b"), values, ses)}
    return optuna.trial.create_trial(values=values, user_attrs={"layout": f"L{number}", "replicates":
                                                                 {"seeds": [0, 1, 2], "metrics": metrics}})


def test_within_noise_marks_only_members_a_noisy_rival_could_dominate():
    member = _trial(0, [1.0, 10.0], [0.1, 0.0])
    close = _trial(1, [1.15, 9.0], [0.1, 0.0])  # worse on a by 0.15 < 2 * sqrt(0.02) = 0.28, better on b
    far = _trial(2, [1.5, 9.0], [0.1, 0.0])  # worse on a by 0.5: separated
    exact = _trial(3, [0.5, 11.0], [0.1, 0.0])  # worse on b, which is exact (se 0): never dominates
    for t, n in ((member, 0), (close, 1), (far, 2), (exact, 3)):
        t.number = n
    directions = ["minimize", "minimize"]
    assert within_noise(member, [close, far, exact], ["a", "b"], directions) == [1]
    assert summarise([1.0, 2.0, 3.0]) == {"mean": 2.0, "se": pytest.approx(1 / math.sqrt(3)), "values": [1, 2, 3]}


def test_a_replicate_varies_the_order_not_the_held_out_split(monkeypatch):
    """The recipe proxy trains with the trial's seed (data order; seed s, s+1, ... for replicates) and holds out
    the study's documents (its data seed: ``data.seed``, else its seed), unless the recipe pins a split seed of its
    own."""
    seen = []
    monkeypatch.setattr(proxy_kinds, "recipe_data", lambda runtime, tokens: "documents")
    monkeypatch.setattr(proxy_kinds, "run_recipe", lambda teacher, student, recipe, out, **kw: seen.append(recipe))
    runtime = SimpleNamespace(teacher=None, tokenizer=None, definition=SimpleNamespace(seed=1000, data_seed=1000))
    for seed in (1000, 1001, 1002):
        proxy_kinds.train_recipe(TrialContext(runtime, ["A"], seed, -1), None, "proxy_tiny", None)
    assert [(r.seed, r.split_seed) for r in seen] == [(1000, 1000), (1001, 1000), (1002, 1000)]
    runtime.definition.data_seed = 0  # data.seed pinned
    proxy_kinds.train_recipe(TrialContext(runtime, ["A"], 1001, -1), None, "proxy_tiny", None)
    assert (seen[-1].seed, seen[-1].split_seed) == (1001, 0)
    pinned = proxy_kinds.load_recipe("proxy_tiny").model_copy(update={"split_seed": 9})
    proxy_kinds.train_recipe(TrialContext(runtime, ["A"], 1001, -1), None, pinned, None)
    assert (seen[-1].seed, seen[-1].split_seed) == (1001, 9)


def test_a_pinned_data_seed_keeps_the_data_across_study_seeds(tmp_path):
    """``data.seed`` fixes the built-in samples, the held-out sequences and the proxy's training documents: two
    study seeds draw the same tokens under it, and different ones without it (the default follows ``seed``)."""
    def draw(seed, data_seed):
        data = {"source": "builtin:teacher_samples", "heldout_sequences": 2, "heldout_length": 16}
        if data_seed is not None:
            data["seed"] = data_seed
        folder = tmp_path / f"s{seed}-{data_seed}"
        folder.mkdir()
        loaded = load_study(write_study(folder, seed=seed, replace={"data": data}))
        assert loaded.definition.data_seed == (seed if data_seed is None else data_seed)
        runtime = StudyRuntime(loaded.resolved(), folder / "run")
        return runtime.heldout, runtime.training_documents(16, 4)

    pinned = [draw(seed, 5) for seed in (0, 1000)]
    assert all(torch.equal(a, b) for a, b in zip(*pinned))
    free = [draw(seed, None) for seed in (0, 1000)]
    assert not any(torch.equal(a, b) for a, b in zip(*free))
    assert all(torch.equal(a, b) for a, b in zip(draw(5, None), pinned[0]))


def test_compare_two_runs_of_a_study(replicated, capsys):
    """``hylo-search compare``: a run against itself agrees perfectly (Spearman 1 on every
    objective, the same front: Jaccard 1) over all its replicated layouts."""
    loaded, _, handle, folder = replicated
    result = compare_runs(handle, handle)
    layouts = sorted(t.user_attrs["layout"] for t in handle.study.get_trials() if t.user_attrs.get("tier") == TIER)
    assert result["common_layouts"] == layouts and result["jaccard"] == 1.0
    assert result["fronts"][0] == sorted(t.user_attrs["layout"] for t in pareto_front(handle.study))
    assert result["spearman"]["proxy_kl"]["spearman"] == pytest.approx(1.0)
    assert result["firm_jaccard"] == 1.0 and set(result["firm_fronts"][0]) <= set(result["fronts"][0])
    assert main(["compare", str(folder / "run"), str(folder / "run")]) == 0
    assert "Jaccard 1.000" in capsys.readouterr().out


def _run(number, layout, values, per_seed=None, **attrs):
    """A stored trial: a first-tier run (``per_seed`` None) or a replicated one (per-seed values per objective)."""
    user = {"layout": layout, **attrs}
    if per_seed is not None:
        user.update(tier=TIER, replicate_of=attrs.get("replicate_of", 0), replicates={"seeds": [0, 1, 2], "metrics": {
            m: {"mean": statistics.fmean(v), "se": statistics.stdev(v) / math.sqrt(3), "values": v}
            for m, v in zip(("kl", "probe"), per_seed)}})
    trial = optuna.trial.create_trial(values=values, user_attrs=user)
    trial.number = number
    return trial


def test_the_race_replicates_what_one_unlucky_seed_hid_and_nothing_far_behind():
    """The second round: a layout whose single run sits just behind a replicated finalist (within the noise its
    replicates measured) is replicated too; one far behind is not; a resumed study (part of the round replicated)
    replicates the rest of the same round, its band still measured on the first round alone."""
    directions = ["minimize", "maximize"]
    # First tier: A on the front; B and C behind it on both objectives (B by 0.1, C by 1.0); D a baseline.
    a, b, c = _run(0, "A", [1.0, -5.0]), _run(1, "B", [1.1, -5.1]), _run(2, "C", [2.0, -6.0])
    d = _run(3, "D", [3.0, -9.0], baseline="all_d")
    # Replicates of the first round (A and the baseline): a single run's noise is 0.1 on kl, 0.2 on probe.
    rep_a = _run(4, "A", [1.0, -5.0], ([0.9, 1.0, 1.1], [-5.2, -5.0, -4.8]), replicate_of=0)
    rep_d = _run(5, "D", [3.0, -9.0], ([2.9, 3.0, 3.1], [-9.2, -9.0, -8.8]), replicate_of=3)
    e = _run(7, "E", [1.2, -5.0])  # worse than A on kl by 0.2, within 2 x 0.1 x sqrt(4/3) = 0.23
    first = [a, b, c, d, e]
    assert [t.user_attrs["layout"] for t in replicates.first_round(first, [a])] == ["A", "D"]
    assert replicates.in_reach(first + [rep_a], [a], ["kl", "probe"], directions, 0, 3) == []  # D not back yet
    assert replicates.run_noise([rep_a, rep_d], ["kl", "probe"]) == pytest.approx([0.1, 0.2])
    added = replicates.in_reach(first + [rep_a, rep_d], [a], ["kl", "probe"], directions, 7, 3)
    assert [(f.parent.user_attrs["layout"], f.seeds) for f in added] == [("B", [7, 8, 9]), ("E", [7, 8, 9])]
    # Resumed after B's replicate (far noisier than the first round's: it must not move the band): E remains.
    rep_b = _run(8, "B", [1.1, -5.1], ([0.1, 1.1, 2.1], [-9.0, -5.1, -1.2]), replicate_of=1)
    left = replicates.in_reach(first + [rep_a, rep_d, rep_b], [a], ["kl", "probe"], directions, 7, 3)
    assert [f.parent.user_attrs["layout"] for f in left] == ["E"]
