"""The ask/tell loop of one study run: ask Optuna for a layout, check its exact constraints, send feasible new
layouts to the executor, tell the results back; promote the best first-tier layouts in a two-tier study. The run's
setup (storage, locks, baselines, library) is :mod:`.run`; what each step does is described there.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from hylo_model.version import __version__

from .. import paths
from ..space.compiled import layout_code
from ..space.cost import memory_metrics
from ..worker.tasks import Failure, TrialTask
from . import replicates
from .optuna_compat import storage_of, stored_trial, trial_id
from .sampler import PROPOSED_ATTR
from .trials import INTERRUPTED_ATTR, pareto_front, ranked_trials, trial_counts, write_trials_table

MAX_SKIPS = 200  # proposals in a row that are infeasible or duplicates before the driver stops asking
SAME_FAILURES = 3  # the first trials all failing with one message: a setup problem, not a layout's


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str,
                   retry: RetryHeartbeatStaleTrialCallback) -> None:
    """Fail a trial its driver left running (``reason`` in its system attr ``hylo:interrupted``) and enqueue its
    retry, which Optuna marks with ``failed_trial``."""
    storage = storage_of(study)
    storage.set_trial_system_attr(trial_id(trial), INTERRUPTED_ATTR, reason)
    storage.set_trial_state_values(trial_id(trial), TrialState.FAIL)
    retry(study, storage.get_trial(trial_id(trial)))


class Heartbeat:
    """Record Optuna heartbeats for the trials in flight (ask/tell does not start Optuna's own thread)."""

    def __init__(self, storage: Any, interval: int) -> None:
        self.storage = storage
        self.trial_ids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: int) -> None:
        while not self._stop.wait(interval):
            for number in list(self.trial_ids):
                self.storage.record_heartbeat(number)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Driver:
    def __init__(self, loaded: Any, options: Any, study: optuna.Study, executor: Any,
                 report: Callable[[str, dict[str, Any]], None], heartbeat: Heartbeat | None,
                 threads: int | None = None) -> None:
        self.loaded = loaded
        self.options = options
        self.study = study
        self.executor = executor
        self.report = report
        self.heartbeat = heartbeat
        self.inflight: dict[int, tuple[optuna.Trial, str, dict[str, float]]] = {}
        self.exhausted = False
        self.skips = 0
        self.failures: list[str] = []
        # BruteForce / Grid enumerate infeasible layouts too; they end by exhaustion, not by MAX_SKIPS.
        self.exhaustive = loaded.definition.sampler.name in ("grid", "brute_force")
        self.resolved = loaded.resolved()
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=loaded.definition.storage.max_retry)
        self.threads = threads
        # Two tiers: asked trials run the first tier's proxy; promoted layouts (keyed by negative task numbers)
        # run the study's proxy.
        self.tiered = loaded.definition.tiers is not None
        self.tier = loaded.first_kind or loaded.proxy_kind
        self.first_proxy = self.resolved["tiers"]["first"] if self.tiered else None
        self.promoting: dict[int, FrozenTrial] = {}
        self.promotions: list[FrozenTrial] | None = None
        self.extra_number = 0  # promoted and replicate runs are keyed by negative task numbers
        # Replicates: the finalists of the answer, each run with several seeds (see .replicates).
        self.replicate_config = loaded.definition.replicates
        self.finalists: list[replicates.Finalist] | None = None
        self.raced = False
        self.replicating: dict[int, tuple[replicates.Finalist, int]] = {}
        self.pending: list[tuple[replicates.Finalist, int]] = []
        self.replicate_probes: dict[str, Any] = {"samples": self.replicate_config.probe_samples}
        if self.replicate_config.probe_lengths:
            self.replicate_probes["lengths"] = sorted(self.replicate_config.probe_lengths)

    def _counted(self) -> int:
        counts = trial_counts(self.study)
        return counts["counted"] - counts["promoted"] - counts["replicated"]

    def _asking(self, counted: int) -> bool:
        return (counted + len(self.inflight) < self.options.trials and not self.exhausted and not self._broken()
                and (self.exhaustive or self.skips < MAX_SKIPS))

    def _busy(self) -> int:
        return len(self.inflight) + len(self.promoting) + len(self.replicating)

    def _searching(self, counted: int) -> bool:
        """Whether the search itself (asked trials, then promotions) still has work."""
        return bool(self.inflight or self.promoting or self._asking(counted)
                    or (self.tiered and (self.promotions is None or self.promotions)))

    def _next_number(self) -> int:
        self.extra_number -= 1
        return self.extra_number

    def loop(self) -> str:
        try:
            while True:
                counted = self._counted()
                while self._busy() < self.executor.capacity and self._asking(counted):
                    self._ask_one()
                if self.tiered and not self.inflight and not self._asking(counted):
                    self._promote()
                if self.replicate_config.seeds > 1 and not self._searching(counted) and not self._broken():
                    self._replicate()
                if not self._busy():
                    break
                for number, record in self.executor.wait(timeout=5.0):
                    if number in self.promoting:
                        self._tell_promoted(self.promoting.pop(number), record)
                    elif number in self.replicating:
                        self._tell_replicate(*self.replicating.pop(number), record)
                    else:
                        self._tell(number, record)
                if self.heartbeat is not None:
                    fail_stale_trials(self.study)
        except KeyboardInterrupt:
            for trial, _, _ in self.inflight.values():
                fail_and_retry(self.study, stored_trial(self.study, trial),
                               "the driver was interrupted while this trial ran; retried", self.retry)
            raise
        counted = self._counted()
        counts = trial_counts(self.study)
        promoted = f"; {counts['promoted']} promoted to {self.loaded.proxy_kind}" if self.tiered else ""
        if counts["replicated"]:
            promoted += f"; {counts['replicated']} finalists replicated over {self.replicate_config.seeds} seeds"
        if counted >= self.options.trials:
            return f"reached {counted} trials{promoted}"
        if self.exhausted:
            return "the search space is exhausted"
        if self._broken():
            return f"stopped: the first {SAME_FAILURES} trials failed the same way ({self.failures[0]})"
        return (f"stopped after {MAX_SKIPS} proposals in a row that were infeasible or already evaluated "
                f"({counted} of {self.options.trials} trials)")

    def _broken(self) -> bool:
        """No trial has completed and the first few failed with one message: every trial would (e.g. a probe
        length the tokenizer cannot fill, a missing dataset), so stop instead of failing them all."""
        return (len(self.failures) >= SAME_FAILURES and len(set(self.failures)) == 1
                and trial_counts(self.study)["complete"] == 0)

    def _ask_one(self) -> None:
        loaded, space = self.loaded, self.loaded.space
        trial = self.study.ask()
        tokens = space.suggest(trial)
        code = layout_code(tokens)
        memory = memory_metrics(loaded, tokens)
        constraints = space.constraints(tokens)
        frozen = stored_trial(self.study, trial)
        if not frozen.constraints:  # a retry carries its failed trial's constraints already
            for key, value in constraints.items():
                trial.set_constraint(key, value)
        # Few, grouped attrs: every one is a storage round trip (a commit on SQLite).
        # Constraint values also go here: Optuna keeps its own copy in system attrs, which dashboards may not show.
        run = {"seed": loaded.definition.seed, "hylo_version": __version__, "constraints": constraints,
               "feasible": all(v <= 0 for v in constraints.values())}
        if PROPOSED_ATTR in frozen.system_attrs:
            run["proposed_layout"] = frozen.system_attrs[PROPOSED_ATTR]
        attrs: dict[str, Any] = {"layout": code, "memory": memory, "run": run, "tier": self.tier}
        violated = [f"{k} {'+' if v > 0 else ''}{v:.4g}" for k, v in constraints.items() if v > 0]
        if violated:
            attrs["infeasible"] = "; ".join(violated)
        else:
            duplicate = self._duplicate_of(code, trial.number)
            if duplicate is not None:
                attrs["duplicate_of"] = duplicate
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if violated or "duplicate_of" in attrs:
            self.skips += 1
            self._finish(trial, state=TrialState.PRUNED)
            return
        self.skips = 0
        task = TrialTask(self.resolved, str(self.options.folder.resolve()), trial.number, tokens,
                         loaded.definition.seed, threads=self.threads, proxy=self.first_proxy)
        self.inflight[trial.number] = (trial, code, memory)
        if self.heartbeat is not None:
            self.heartbeat.trial_ids.add(trial_id(trial))
        self.executor.submit(trial.number, task)

    def _duplicate_of(self, code: str, number: int) -> int | None:
        for other_number, (_, other, _) in self.inflight.items():
            if other == code:
                return other_number
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            # An interrupted trial (FAIL, retried) is not an evaluation; its completed retry is, although Optuna
            # copied the interrupted mark into it. Promoted and replicated trials re-score an asked layout.
            interrupted = t.state == TrialState.FAIL and INTERRUPTED_ATTR in t.system_attrs
            rescored = "promoted_from" in t.user_attrs or "replicate_of" in t.user_attrs
            if t.number != number and t.user_attrs.get("layout") == code and not interrupted and not rescored:
                return t.number
        return None

    def _tell(self, number: int, record: dict[str, Any]) -> None:
        trial, _, memory = self.inflight.pop(number)
        if self.heartbeat is not None:
            self.heartbeat.trial_ids.discard(trial_id(trial))
        lost = Failure.of(record)
        if lost is not None and lost.kind == "lost":
            # The worker or its node died: not the layout's failure. Failed and retried (on whatever node is up),
            # and not counted, like a trial its driver left running.
            trial.set_user_attr("result", {k: record[k] for k in ("node", "host") if k in record})
            fail_and_retry(self.study, stored_trial(self.study, trial), f"lost: {lost.message}; retried", self.retry)
            self._reported(stored_trial(self.study, trial))
            return
        attrs, values, failure = self._outcome(record, memory)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if failure:
            self.failures.append(failure)
            self._finish(trial, state=TrialState.FAIL)
        else:
            self._finish(trial, values=values)

    def _outcome(self, record: dict[str, Any], memory: dict[str, float]
                 ) -> tuple[dict[str, Any], list[float] | None, str | None]:
        """A worker's record as grouped user attrs, the objective values, and the failure (None if it worked)."""
        attrs: dict[str, Any] = {"result": {k: record[k] for k in ("node", "host", "pid", "device", "timings",
                                                                   "cache", "details", "teacher_fingerprint",
                                                                   "hylo_version", "traceback") if k in record}}
        attrs.update({k: record[k] for k in ("metrics", "losses", "layer_table", "probe_table") if k in record})
        values = None
        failure = Failure.of(record)
        if failure is None:
            metrics = {**memory, **record.get("metrics", {})}
            values = [metrics.get(m, math.nan) for m in self.loaded.metrics]
            bad = [m for m, v in zip(self.loaded.metrics, values) if not math.isfinite(v)]
            if bad:
                failure = Failure("nan", f"objective {', '.join(bad)} is not finite")
        if failure is not None:
            attrs.update(failure=failure.text, failure_kind=failure.kind)
        return attrs, values, failure.text if failure is not None else None

    def _promote(self) -> None:
        """Submit the second-tier runs of the best first-tier layouts, as executor capacity allows."""
        if self.promotions is None:
            tiers = self.loaded.definition.tiers
            complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            first = [t for t in complete if "promoted_from" not in t.user_attrs
                     and all(v <= 0 for v in t.constraints.values())]
            unique = list({t.user_attrs["layout"]: t for t in reversed(first)}.values())  # earliest per layout
            done = {t.user_attrs.get("layout") for t in self.study.get_trials(deepcopy=False)
                    if "promoted_from" in t.user_attrs}
            best = ranked_trials(unique, self.study.directions)[:tiers.promote]
            self.promotions = [t for t in best if t.user_attrs["layout"] not in done]
        while self.promotions and self._busy() < self.executor.capacity:
            parent = self.promotions.pop(0)
            number = self._next_number()
            tokens = parent.user_attrs["layout"].split(",")
            self.promoting[number] = parent
            self.executor.submit(number, TrialTask(self.resolved, str(self.options.folder.resolve()), number,
                                                   tokens, self.loaded.definition.seed, threads=self.threads))

    def _tell_promoted(self, parent: FrozenTrial, record: dict[str, Any]) -> None:
        """A second-tier result, stored as a finished trial of its own (same parameters as its parent)."""
        memory = parent.user_attrs.get("memory", {})
        attrs, values, failure = self._outcome(record, memory)
        attrs.update(layout=parent.user_attrs["layout"], memory=memory, run=parent.user_attrs.get("run", {}),
                     tier=self.loaded.proxy_kind, promoted_from=parent.number)
        if "baseline" in parent.user_attrs:
            attrs["baseline"] = parent.user_attrs["baseline"]
        self._add_rescored(parent, attrs, values, failure, "promoted_from")

    def _add_rescored(self, parent: FrozenTrial, attrs: dict[str, Any], values: list[float] | None,
                      failure: str | None, key: str) -> None:
        """Store a layout's rescoring (second tier, replicates) as a finished trial of its own with its parent's
        parameters and constraints, then report it. ``key``: the user attr naming the parent."""
        frozen = optuna.trial.create_trial(
            state=TrialState.FAIL if failure else TrialState.COMPLETE, values=None if failure else values,
            params=parent.params, distributions=parent.distributions, user_attrs=attrs,
            constraints=dict(parent.constraints))
        self.study.add_trial(frozen)
        # The stored trial (numbered by the storage), found by its parent: another driver may share the storage.
        self._reported(next(t for t in reversed(self.study.get_trials(deepcopy=False))
                            if t.user_attrs.get(key) == parent.number))

    def _replicate(self) -> None:
        """Submit the finalists' seeded runs (the study's proxy, the finalists' probe samples), as capacity allows."""
        config = self.replicate_config
        if self.finalists is None:
            trials = self.study.get_trials(deepcopy=False)
            self.finalists = replicates.finalists(trials, pareto_front(self.study, replicated=False),
                                                  self.loaded.definition.seed, config.seeds)
            self.pending = [(f, seed) for f in self.finalists for seed in f.seeds]
        if config.race and not self.raced and not self.pending and not self.replicating:
            self.raced = True  # the second round: layouts whose single run is within noise of the front
            trials = self.study.get_trials(deepcopy=False)
            added = replicates.in_reach(trials, pareto_front(self.study, replicated=False), self.loaded.metrics,
                                        self.loaded.directions, self.loaded.definition.seed, config.seeds)
            self.finalists += added
            self.pending = [(f, seed) for f in added for seed in f.seeds]
        while self.pending and self._busy() < self.executor.capacity:
            finalist, seed = self.pending.pop(0)
            number = self._next_number()
            self.replicating[number] = (finalist, seed)
            self.executor.submit(number, TrialTask(self.resolved, str(self.options.folder.resolve()), number,
                                                   finalist.tokens, seed, threads=self.threads,
                                                   probes=self.replicate_probes))

    def _tell_replicate(self, finalist: replicates.Finalist, seed: int, record: dict[str, Any]) -> None:
        """One seed of a finalist back; when its last seed is, the replicated trial is stored."""
        finalist.records[seed] = record
        if not finalist.done:
            return
        parent = finalist.parent
        attrs, values, failure = replicates.replicated_trial(finalist, self.loaded.metrics,
                                                             self.replicate_config.probe_samples)
        self._add_rescored(parent, attrs, values, failure, "replicate_of")

    def _finish(self, trial: optuna.Trial, values: list[float] | None = None, state: TrialState | None = None) -> None:
        try:
            self.study.tell(trial, values, state=state)
        except RuntimeError as error:
            # BruteForce/Grid call study.stop() when the space is exhausted, which only works inside optimize();
            # the trial is stored before that call, so the signal is all that is lost: keep it.
            if "Study.stop" not in str(error):
                raise
            self.exhausted = True
        self._reported(stored_trial(self.study, trial))

    def _reported(self, frozen: FrozenTrial) -> None:
        """After a trial is stored: the trials table rewritten, and the trial reported with the study's counts."""
        write_trials_table(self.study, self.options.folder / paths.TRIALS_TABLE, self.loaded.metrics)
        counts = trial_counts(self.study)
        counts["running"] = self._busy()
        counts["front"] = len(pareto_front(self.study))
        counts["finalists_left"] = sum(not f.done for f in self.finalists or [])  # the rounds known so far
        self.report("trial", {"trial": frozen, "counts": counts})
        for callback in self.options.callbacks:  # experiment tracking (search/tracking.py), after the record
            callback(self.study, frozen)
