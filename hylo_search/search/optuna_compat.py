"""The only module that touches Optuna's private names; ``tests/search/test_optuna_compat.py`` is its canary.

Optuna keeps some implementations in underscore modules and attributes. The driver needs four of them: a study's
storage (to read and write one trial without the ``Trial`` object's caching), a trial's storage id, the Pareto
front of a given list of trials (``study.best_trials`` only covers the whole study), and the non-domination rank
NSGA-II sorts by. When an Optuna release moves one, only this file changes, and the canary test says which.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import optuna
from optuna.study._multi_objective import _fast_non_domination_rank, _get_pareto_front_trials_by_trials
from optuna.trial import FrozenTrial


def storage_of(study: optuna.Study) -> Any:
    """The study's :class:`optuna.storages.BaseStorage` (``study._storage``)."""
    return study._storage


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (``trial._trial_id``), which differs from ``trial.number``."""
    return trial._trial_id


def stored_trial(study: optuna.Study, trial: optuna.Trial | FrozenTrial) -> FrozenTrial:
    """The trial as the storage holds it now."""
    return storage_of(study).get_trial(trial_id(trial))


def pareto_front_of(trials: Sequence[FrozenTrial], directions: Sequence[Any]) -> list[FrozenTrial]:
    """The feasible non-dominated trials among ``trials`` (what ``study.best_trials`` computes for a whole study)."""
    return list(_get_pareto_front_trials_by_trials(list(trials), list(directions), consider_constraint=True))


def non_domination_rank(loss: np.ndarray) -> np.ndarray:
    """Rank 0 for the non-dominated rows of ``loss`` ``[n, objectives]`` (all minimised), 1 for the next front..."""
    return _fast_non_domination_rank(loss)
