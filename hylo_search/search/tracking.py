"""Experiment tracking for a study: every counted trial (completed or failed) logged as one run of MLflow or
Weights & Biases, with their own clients. A tracker is a callback ``(study, frozen_trial)``, as Optuna's
``optimize`` callbacks are; the driver calls each after it stores a trial (``Options.callbacks``;
``hylo-search study --track NAME``).

- ``mlflow`` (``pip install 'hylo-search[mlflow]'``): one run per trial in the experiment named after the study,
  wherever ``MLFLOW_TRACKING_URI`` points (MLflow's default otherwise; ``sqlite:///mlflow.db`` for a local store).
- ``wandb`` (``pip install 'hylo-search[wandb]'``): one run per trial, grouped by study, in the project
  ``$WANDB_PROJECT`` (default ``hylo-search``); ``WANDB_MODE=offline`` keeps it local.

A run holds the objectives and the trial's other numbers (proxy and probe metrics, memory ratios, timings) as
metrics, the per-layer choices as params, and tags: study, number, state, layout, baseline, tier, failure. One run
per trial rather than one step per trial, because trials finish out of order on Ray and W&B drops a step lower
than its last. Why not optuna-integration's ``MLflowCallback`` / ``WeightsAndBiasesCallback``: both are deprecated
since optuna-integration 4.9 (removal in 6.0), their successors load code from OptunaHub at run time, and they
log the objectives only.

Tracking is a copy; the Optuna storage stays the record. A tracker that fails (a server down) warns once, on
stderr, and the study goes on.
"""

from __future__ import annotations

import math
import os
import re
import sys
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import UsageError

TRACKERS = ("mlflow", "wandb")
# The user attrs worth a tag: the rest (losses, per-layer and probe tables) is in trials.parquet.
TAGGED = ("layout", "baseline", "tier", "source", "promoted_from", "replicate_of", "failure")

Callback = Callable[[optuna.Study, FrozenTrial], None]


def tracking_callbacks(names: list[str], metrics: list[str]) -> list[Callback]:
    """One callback per tracker in ``names`` (each one of :data:`TRACKERS`); ``metrics`` names the objectives.
    A tracker whose package is missing is a usage error naming the extra to install."""
    callbacks: list[Callback] = []
    for name in names:
        if name not in TRACKERS:
            raise UsageError(f"--track {name!r}: allowed: {', '.join(TRACKERS)}")
        try:
            tracker = MLflowTracker(metrics) if name == "mlflow" else WandbTracker(metrics)
        except ImportError:
            raise UsageError(f"--track {name} needs {name}: pip install 'hylo-search[{name}]'") from None
        callbacks.append(Tracked(name, tracker))
    return callbacks


def run_record(study_name: str, trial: FrozenTrial,
               metrics: list[str]) -> tuple[dict[str, float], dict[str, str], dict[str, str]]:
    """``(metrics, params, tags)`` of one trial's run: the objectives under their names, then the trial's other
    finite numbers (plug-in metrics, memory, ``time:*``) not already there."""
    attrs = trial.user_attrs
    numbers: dict[str, float] = dict(zip(metrics, trial.values or []))
    extra = {**(attrs.get("metrics") or {}), **(attrs.get("memory") or {}),
             **{f"time:{k}": v for k, v in ((attrs.get("result") or {}).get("timings") or {}).items()}}
    for key, value in extra.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            numbers.setdefault(key, float(value))
    tags = {"study": study_name, "number": str(trial.number), "state": trial.state.name.lower()}
    tags.update({k: str(attrs[k])[:500] for k in TAGGED if attrs.get(k) is not None})
    return numbers, {k: str(v) for k, v in trial.params.items()}, tags


class MLflowTracker:
    def __init__(self, metrics: list[str]) -> None:
        import mlflow

        self.mlflow = mlflow
        self.metrics = list(metrics)
        self.experiments: dict[str, str] = {}

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        mlflow = self.mlflow
        if study.study_name not in self.experiments:
            self.experiments[study.study_name] = mlflow.set_experiment(study.study_name).experiment_id
        numbers, params, tags = run_record(study.study_name, trial, self.metrics)
        with mlflow.start_run(experiment_id=self.experiments[study.study_name], run_name=f"trial {trial.number}"):
            mlflow.log_metrics({mlflow_key(k): v for k, v in numbers.items()})
            mlflow.log_params(params)
            mlflow.set_tags(tags)


def mlflow_key(name: str) -> str:
    """A metric name MLflow accepts (alphanumerics and ``_-. :/``): ``probe_accuracy@512`` ->
    ``probe_accuracy_at_512``."""
    return re.sub(r"[^\w\-. :/]", "_", name.replace("@", "_at_"))


class WandbTracker:
    def __init__(self, metrics: list[str]) -> None:
        import wandb

        self.wandb = wandb
        self.metrics = list(metrics)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        numbers, params, tags = run_record(study.study_name, trial, self.metrics)
        run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "hylo-search"), group=study.study_name,
                              name=f"{study.study_name} trial {trial.number}", config={**params, **tags})
        try:
            run.log(numbers)
        finally:
            run.finish()


class Tracked:
    """A tracker as the driver calls it: counted trials only (infeasible and duplicate proposals are not runs),
    and a failure warned once instead of raised."""

    def __init__(self, name: str, tracker: Callback) -> None:
        self.name = name
        self.tracker = tracker
        self.warned = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in (TrialState.COMPLETE, TrialState.FAIL):
            return
        try:
            self.tracker(study, trial)
        except Exception as error:  # noqa: BLE001 — tracking must never stop a study
            if not self.warned:
                self.warned = True
                print(f"hylo-search: warning: --track {self.name} failed on trial {trial.number} "
                      f"({type(error).__name__}: {error}); the study goes on without it", file=sys.stderr)
