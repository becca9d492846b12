"""A maximised objective (as every shipped study maximises ``probe_accuracy``) is ranked as maximised everywhere
the search orders trials: the ranking, the Pareto front (with tiers), two-tier promotion, the audit's choice of
layouts, the within-noise marks, and a real study's stored directions and front.

Expected answers come from brute force written independently of Optuna (``tests/search/helpers.py``), fed the
directions from the test, never from the code under test; each data set is checked to rank differently when the
maximised objective is minimised, so a direction ignored anywhere shows.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from hylo_search.results.audit import TOP_K, choose_layouts, top_k_regret
from hylo_search.search.driver import Driver
from hylo_search.search.replicates import within_noise
from hylo_search.search.run import options_for, run_study
from hylo_search.search.storage import open_study_folder
from hylo_search.search.trials import pareto_front, ranked_trials
from hylo_search.study import load_study

from .helpers import brute_force_front, brute_force_ranking, write_study

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.WARNING)

DIRECTIONS = ["maximize", "minimize"]  # probe_accuracy up, cache_bytes down, as the shipped studies
OBJECTIVES = [{"metric": "probe_accuracy", "direction": "maximize"}, {"metric": "cache_bytes", "direction": "minimize"}]
AS_MINIMIZED = ["minimize", "minimize"]


def _layout(k):
    """A distinct 4-layer layout code per k (base 3 over A, L8, G), never the teacher's (the audit leaves it out)."""
    return ",".join(["A", "L8", "G"][((k + 1) // 3**i) % 3] for i in range(4))


def _study(rng, n=16, **attrs):
    """An in-memory study with ``n`` completed trials: accuracy in [0, 1] and cache bytes with ties, every fifth
    infeasible, two layouts tried twice, one failed trial."""
    study = optuna.create_study(directions=DIRECTIONS)
    for k in range(n):
        accuracy = float(np.round(rng.uniform(0, 1), 2))
        cache = float(rng.integers(1, 8) * 4096)
        study.add_trial(create_trial(values=[accuracy, cache], user_attrs={"layout": _layout(k % (n - 2)), **attrs},
                                     constraints={"cache_bytes@512": 0.5 if k % 5 == 4 else -0.1}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"layout": _layout(n)}))
    return study


def _feasible(trials):
    return [t for t in trials if t.state == TrialState.COMPLETE and all(v <= 0 for v in t.constraints.values())]


def _numbers(trials):
    return [t.number for t in trials]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("as_enum", [False, True])  # the driver passes Optuna's enums, the audit the YAML strings
def test_ranking_puts_the_most_accurate_first(seed, as_enum):
    trials = _feasible(_study(np.random.default_rng(seed)).trials)
    directions = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE] if as_enum else DIRECTIONS
    got = ranked_trials(trials, directions)
    assert _numbers(got) == _numbers(brute_force_ranking(trials, DIRECTIONS))
    assert _numbers(got) != _numbers(brute_force_ranking(trials, AS_MINIMIZED))
    # The most accurate trial is never dominated, and its front is ordered by accuracy: it comes first.
    assert got[0].values[0] == max(t.values[0] for t in trials)


def test_ranking_a_hand_made_case():
    """(accuracy, cache): b dominates a (more accurate, same cache); c is cheapest; d is worst on both."""
    study = optuna.create_study(directions=DIRECTIONS)
    for accuracy, cache in [(0.5, 100.0), (0.9, 100.0), (0.2, 10.0), (0.1, 200.0)]:
        study.add_trial(create_trial(values=[accuracy, cache], user_attrs={"layout": "A"}))
    a, b, c, d = study.trials
    assert ranked_trials(study.trials, DIRECTIONS) == [b, c, a, d]
    assert pareto_front(study) == [b, c]


@pytest.mark.parametrize("seed", range(3))
def test_the_front_over_each_tier_is_the_brute_force_one(seed):
    rng = np.random.default_rng(seed)
    study = _study(rng)
    first = list(study.trials)
    assert _numbers(pareto_front(study)) == brute_force_front(first, DIRECTIONS)
    assert brute_force_front(first, DIRECTIONS) != brute_force_front(first, AS_MINIMIZED)
    for key in ("promoted_from", "replicate_of"):  # each higher tier takes the front over
        for parent in _feasible(first)[:6]:
            study.add_trial(create_trial(values=[float(rng.uniform(0, 1)), parent.values[1]],
                                         user_attrs={"layout": parent.user_attrs["layout"], key: parent.number},
                                         constraints=dict(parent.constraints)))
        tier = [t for t in study.trials if key in t.user_attrs]
        assert _numbers(pareto_front(study)) == brute_force_front(tier, DIRECTIONS)


@pytest.fixture(scope="module")
def tiered(tmp_path_factory):
    """A two-tier study definition that maximises probe accuracy (loaded only: nothing runs)."""
    folder = tmp_path_factory.mktemp("maximize")
    path = write_study(folder, name="tiers_max", objectives=OBJECTIVES,
                       proxy={"kind": "recipe", "recipe": "proxy_tiny", "tokens": 768},
                       library={"recipe": "proxy_tiny", "tokens": 512}, tiers={"promote": 3})
    return load_study(path), folder


class _Recorder:
    """An executor that records what it is given and runs nothing."""

    capacity = 8

    def __init__(self):
        self.tasks = []

    def submit(self, number, task):
        self.tasks.append(task)


@pytest.mark.parametrize("seed", range(3))
def test_two_tier_promotion_picks_the_most_accurate_layouts(tiered, seed):
    loaded, folder = tiered
    assert loaded.directions == DIRECTIONS
    study = _study(np.random.default_rng(seed), tier="assembled")
    executor = _Recorder()
    driver = Driver(loaded, SimpleNamespace(folder=folder), study, executor, lambda *_: None, None)
    driver._promote()
    first = {}
    for t in _feasible(study.trials):  # each layout's earliest trial
        first.setdefault(t.user_attrs["layout"], t)
    want = [t.user_attrs["layout"].split(",") for t in brute_force_ranking(list(first.values()), DIRECTIONS)[:3]]
    wrong = [t.user_attrs["layout"].split(",") for t in brute_force_ranking(list(first.values()), AS_MINIMIZED)[:3]]
    assert [task.tokens for task in executor.tasks] == want != wrong


@pytest.mark.parametrize("seed", range(3))
def test_the_audit_takes_layouts_in_ranking_order(tiered, seed):
    """The audit spreads its layouts over the ranking: all of them in order, or best, middle and worst."""
    loaded, _ = tiered
    trials = _study(np.random.default_rng(seed)).trials
    unique = {}
    for t in brute_force_ranking(_feasible(trials), DIRECTIONS):
        unique.setdefault(t.user_attrs["layout"], t.user_attrs["layout"].split(","))
    order = list(unique.values())
    assert choose_layouts(loaded, trials, len(order), seed=0) == order
    best, middle, worst = choose_layouts(loaded, trials, 3, seed=0)
    assert best == order[0] and worst == order[-1] and 0 < order.index(middle) < len(order) - 1
    minimized = list({t.user_attrs["layout"]: None for t in brute_force_ranking(_feasible(trials), AS_MINIMIZED)})
    assert order[0] != minimized[0].split(",")


def test_within_noise_reads_the_direction():
    """A replicated member at 0.50 accuracy (standard error 0.01): a layout with the same cache bytes at 0.80 could
    dominate it, one at 0.20 could not (0.30 is far outside the noise band); read as minimised, the two swap."""

    def replicated(number, accuracy, layout):
        stats = {"probe_accuracy": {"se": 0.01}, "cache_bytes": {"se": 0.0}}
        trial = create_trial(values=[accuracy, 4096.0], user_attrs={"layout": layout, "replicates": {"metrics": stats}})
        trial.number = number
        return trial

    member = replicated(0, 0.50, "A,G,G,G")
    better, worse = replicated(1, 0.80, "L8,G,G,G"), replicated(2, 0.20, "G,A,G,G")
    metrics = ["probe_accuracy", "cache_bytes"]
    assert within_noise(member, [better, worse], metrics, DIRECTIONS) == [1]
    assert within_noise(member, [better, worse], metrics, AS_MINIMIZED) == [2]


def test_a_real_study_stores_the_directions_and_its_front_maximises(tmp_path):
    """Four real trials of the test study with accuracy maximised: the stored study, the summary's front and the
    Parquet schema all keep the definition's directions."""
    import pyarrow.parquet as pq

    path = write_study(tmp_path, name="real_max", trials=4, objectives=OBJECTIVES)
    loaded = load_study(path)
    summary = run_study(loaded, options_for(loaded, out=str(tmp_path / "run")))
    study = open_study_folder(str(tmp_path / "run")).study
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert summary.front == _numbers(pareto_front(study)) == brute_force_front(study.trials, DIRECTIONS)
    schema = pq.read_schema(tmp_path / "run" / "trials.parquet")
    assert schema.metadata[b"hylo:objectives"] == b'{"probe_accuracy": "maximize", "cache_bytes": "minimize"}'


@pytest.mark.parametrize("seed", range(3))
def test_the_audit_regret_of_a_maximised_metric(seed):
    """Top-k regret: the best promoted accuracy of all audited layouts minus the best among the k layouts the cheap
    score ranks highest (higher is better on both sides), by brute force over random scores."""
    rng = np.random.default_rng(seed)
    cheap, promoted = rng.uniform(0, 1, 8).round(2).tolist(), rng.uniform(0, 1, 8).round(2).tolist()

    def by_hand(sign):
        top = sorted(range(8), key=lambda i: -sign * cheap[i])  # sorted() is stable: ties keep their order
        best = max(sign * v for v in promoted)
        return {str(k): best - max(sign * promoted[i] for i in top[:k]) for k in TOP_K}

    got = top_k_regret(cheap, promoted, "maximize")
    assert got == pytest.approx(by_hand(1.0), abs=1e-12) and got != pytest.approx(by_hand(-1.0), abs=1e-12)
