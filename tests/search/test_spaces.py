"""Exact constraints, the vectorised feasibility count, baselines, repair, and the samplers on a layout space."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from hylo_search.search.sampler import PROPOSED_ATTR, RepairSampler, make_sampler, repair
from hylo_search.space.baselines import baselines
from hylo_search.study import load_study

from .helpers import write_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Qwen3-1.7B's dimensions (config only, offline): 28 layers, every mixer, tight count rule and budgets."""
    folder = tmp_path_factory.mktemp("wide")
    path = write_study(folder, name="wide", teacher="Qwen/Qwen3-1.7B", target_length=65536,
                       upcycle={"qk_rope_head_dim": 64},
                       space={"mixers": "all", "mla_ranks": [64, 128, 256], "fixed": {0: "A"},
                              "counts": ["attention+mla between 2 and 6"],
                              "budgets": ["cache_bytes@64k <= 10%", "params <= 1.12x"]})
    return load_study(path)


def test_vectorised_constraints_equal_the_scalar_ones(wide):
    space = wide.space
    rng = np.random.default_rng(1)
    dims = [len(d.choices) for d in space.distributions().values()]
    index = np.stack([rng.integers(d, size=64) for d in dims], axis=1)
    keys, values = space.constraint_matrix(index)
    names = list(space.distributions())
    for row, got in zip(index, values):
        params = {n: space.distributions()[n].choices[i] for n, i in zip(names, row)}
        want = space.constraints(space.tokens_from_params(params))
        assert list(want) == keys
        np.testing.assert_allclose(got, list(want.values()), rtol=1e-12, atol=1e-9)


def test_feasible_fraction_exact_for_small_spaces(study_file):
    space = load_study(study_file).space
    fraction, how = space.feasible_fraction()
    brute = [space.is_feasible(t) for t in space.iter_tokens()]
    assert how.startswith("exact") and fraction == sum(brute) / len(brute) and 0 < fraction < 1


def test_baselines_fit_the_space_and_are_distinct(wide):
    found = baselines(wide.space)
    names = [b.name for b in found]
    assert len({b.code for b in found}) == len(found)
    assert "teacher" in names and any(n.startswith("uniform_interleave") for n in names)
    for baseline in found:
        assert wide.space.params_from_tokens(list(baseline.tokens)) is not None
        assert baseline.tokens[0] == "A"  # the fixed layer
    assert any(wide.space.is_feasible(list(b.tokens)) for b in found)


def test_repair_reaches_feasibility(wide):
    space, rng = wide.space, np.random.default_rng(0)
    fraction, _ = space.feasible_fraction(samples=5000)
    assert fraction < 1e-3  # uniform proposals are almost never feasible here
    for _ in range(20):
        proposal = space.sample(rng)
        fixed = repair(space, proposal, rng)
        assert space.is_feasible(fixed)
        assert space.params_from_tokens(fixed) is not None


@pytest.mark.parametrize("name", ["tpe", "nsga2", "random", "gp"])
def test_repair_sampler_proposes_only_feasible_untried_layouts(wide, name):
    options = {"population_size": 4} if name == "nsga2" else {"n_startup_trials": 3} if name == "tpe" else {"n_startup_trials": 2} if name == "gp" else {}
    sampler = make_sampler(name, wide.space, seed=0, options=options)
    assert isinstance(sampler, RepairSampler)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    rng = np.random.default_rng(0)
    trials = 5 if name == "gp" else 12
    for _ in range(trials):
        trial = study.ask()
        tokens = wide.space.suggest(trial)
        assert wide.space.is_feasible(tokens)
        trial.set_user_attr("layout", ",".join(tokens))
        study.tell(trial, [float(rng.random()), float(wide.space.costs.layout_cache(tokens, 65536))])
    layouts = [t.user_attrs["layout"] for t in study.trials]
    assert len(set(layouts)) == len(layouts)
    assert any(PROPOSED_ATTR in t.system_attrs for t in study.trials)


def test_brute_force_enumerates_the_space_once(study_file):
    space = load_study(study_file).space
    study = optuna.create_study(directions=["minimize"], sampler=make_sampler("brute_force", space, seed=0))
    seen = []
    stopped = False
    while not stopped:
        trial = study.ask()
        seen.append(",".join(space.suggest(trial)))
        try:
            study.tell(trial, [0.0])
        except RuntimeError as error:  # BruteForce signals exhaustion with study.stop() (see engine._finish)
            stopped = "Study.stop" in str(error)
    assert sorted(seen) == sorted(",".join(t) for t in space.iter_tokens())
