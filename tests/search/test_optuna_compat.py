"""Canary for the Optuna private names :mod:`hylo_search.search.optuna_compat` wraps: if an Optuna release moves
one, this fails here, naming it, before any study breaks."""

from __future__ import annotations

import numpy as np
import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from hylo_search.search import optuna_compat


def _study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "maximize"])
    for a, b in [(1.0, 1.0), (0.5, 0.5), (2.0, 3.0), (1.5, 0.2)]:
        trial = study.ask()
        study.tell(trial, [a, b])
    return study


def test_storage_and_trial_id():
    study = _study()
    assert isinstance(optuna_compat.storage_of(study), BaseStorage)
    trial = study.ask()
    number = optuna_compat.trial_id(trial)
    assert isinstance(number, int)
    frozen = optuna_compat.stored_trial(study, trial)
    assert frozen.number == trial.number and frozen.state == TrialState.RUNNING


def test_pareto_front_of_given_trials_matches_best_trials():
    study = _study()
    trials = study.get_trials(deepcopy=False)
    front = optuna_compat.pareto_front_of(trials, study.directions)
    assert sorted(t.number for t in front) == sorted(t.number for t in study.best_trials) == [0, 1, 2]
    assert [t.number for t in optuna_compat.pareto_front_of(trials[3:], study.directions)] == [3]


def test_non_domination_rank():
    loss = np.array([[1.0, 1.0], [2.0, 2.0], [0.5, 3.0], [3.0, 3.0]])
    assert optuna_compat.non_domination_rank(loss).tolist() == [0, 1, 0, 2]
