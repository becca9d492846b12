"""The study driver: it owns the Optuna ask/tell loop, and executors only run trials.

Why not Ray Tune: its OptunaSearch drops constraints and intermediate results in multi-objective mode and always
prunes nothing, and constraints here must be exact and known *before* a trial costs anything. Tune's other help is
not needed either: the Optuna storage is the bookkeeping and the restore point, and its rung schedulers need
intermediate values, which multi-objective Optuna refuses. Ray places the work (:mod:`.executors.ray`). The driver:

1. asks Optuna for a trial (the sampler proposes a layout; enqueued baselines and retries come first);
2. computes the layout's constraints exactly (cache bytes, parameters, count rules — no model is built) and
   records them with ``trial.set_constraint``, with the memory metrics in user attrs;
3. an infeasible layout is told PRUNED with the reason in ``infeasible`` (it never trains; TPE learns from its
   constraint values, NSGA-II and GP see only completed trials) — and a layout already evaluated or in flight is
   told PRUNED with ``duplicate_of``; neither counts towards ``--trials``;
4. a feasible new layout goes to the executor (local: in-process; ray: a task with the study's resources);
5. the record that comes back (metrics, losses, per-layer and probe tables, timings, node) is stored in user
   attrs, and the trial is told COMPLETE with the objective values, or FAIL with ``failure`` (OOM / NaN /
   exception) — a failed trial counts, and the study goes on;
6. after every tell, ``trials.parquet`` is rewritten (atomically) from the storage.

``--trials N`` is the number of counted trials (COMPLETE + FAIL) the study should hold; rerunning the same command
continues until it does. Trials a dead driver left RUNNING are failed (system attr ``hylo:interrupted``, not
counted) and retried through Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`.

A study that uses the block library (:mod:`.library`: an ``assembled`` proxy, or ``library.pool``) first builds or
completes it with the same executor, and enqueues the exact solver's pool (:mod:`.assembly`) once. With ``tiers``,
the asked trials are the first tier (``tiers.first``, the ``assembled`` proxy by default; ``--trials`` counts
them); when no more are asked, the ``tiers.promote`` best first-tier layouts without a second-tier result run with
the study's ``proxy``, and each comes back as a trial of its own (``study.add_trial``, user attrs ``tier`` and
``promoted_from``; a driver that dies meanwhile loses nothing but the work in flight).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from . import runs
from .baselines import baselines
from .errors import UsageError
from .objectives import memory_metrics
from .results import INTERRUPTED_ATTR, pareto_front, ranked_trials, trial_counts, write_trials_table
from .runtime import TrialTask
from .sampler import PROPOSED_ATTR, make_sampler
from .spaces import layout_code
from .study import LoadedStudy

FINGERPRINT_ATTR = "hylo:fingerprint"
BASELINES_ATTR = "hylo:baselines_enqueued"
POOL_ATTR = "hylo:pool_enqueued"
MAX_SKIPS = 200  # proposals in a row that are infeasible or duplicates before the driver stops asking
SAME_FAILURES = 3  # the first trials all failing with one message: a setup problem, not a layout's


@dataclass
class Options:
    trials: int
    executor: str
    address: str | None
    storage: str
    folder: Path


@dataclass
class Summary:
    folder: Path
    storage: str
    counts: dict[str, int]
    stop_reason: str
    front: list[int] = field(default_factory=list)


def options_for(loaded: LoadedStudy, trials: int | None = None, executor: str | None = None,
                address: str | None = None, storage: str | None = None, out: str | None = None) -> Options:
    definition = loaded.definition
    folder = runs.study_dir(loaded.name, out)
    url = storage or definition.storage.url or runs.default_storage_url(folder)
    runs.check_storage_url(url)
    return Options(trials or definition.trials, executor or definition.executor.name,
                   address or definition.executor.address, url, folder)


def run_study(loaded: LoadedStudy, options: Options, reporter: Callable[[str, dict[str, Any]], None] | None = None,
              executor_factory: Callable[..., Any] | None = None) -> Summary:
    """Run (or resume) ``loaded`` until it holds ``options.trials`` counted trials; see the module docstring.

    ``reporter(event, info)`` receives ``library_started``, ``library_task`` and ``library`` (a study that uses
    the block library builds it first), ``started``, ``trial`` (a finished or skipped trial) and ``finished``.
    """
    report = reporter or (lambda event, info: None)
    if loaded.problems:
        raise UsageError(loaded.problems[0])
    folder = options.folder
    folder.mkdir(parents=True, exist_ok=True)
    locks = [runs.DriverLock(folder)]
    shared = runs.storage_file(options.storage)
    if shared is not None and shared.resolve().parent != folder.resolve():
        locks.append(runs.DriverLock(folder, shared.with_name(shared.name + ".lock")))
    executor = None
    heartbeat: _Heartbeat | None = None
    try:
        for lock in locks:
            lock.acquire()
        study = _open_study(loaded, options)
        _write_folder(loaded, options)
        _recover(study, loaded, options)
        _enqueue_baselines(study, loaded)
        executor = (executor_factory or _make_executor)(loaded, options)
        if loaded.uses_library():
            _prepare_library(study, loaded, options, executor, report)
        storage = study._storage
        if getattr(storage, "get_heartbeat_interval", lambda: None)():
            heartbeat = _Heartbeat(storage, loaded.definition.storage.heartbeat_interval)
        driver = _Driver(loaded, options, study, executor, report, heartbeat)
        report("started", {"folder": str(folder), "storage": options.storage, "capacity": executor.capacity,
                           "target": options.trials, "counts": trial_counts(study)})
        stop_reason = driver.loop()
        write_trials_table(study, folder / "trials.parquet", loaded.metrics)
        counts = trial_counts(study)
        front = [t.number for t in pareto_front(study)]
        report("finished", {"counts": counts, "stop_reason": stop_reason, "front": front})
        return Summary(folder, options.storage, counts, stop_reason, front)
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if executor is not None:
            executor.close()
        for lock in locks:
            lock.release()


def _open_study(loaded: LoadedStudy, options: Options) -> optuna.Study:
    config = loaded.definition.storage
    storage = runs.make_storage(options.storage, config.heartbeat_interval, config.grace_period, config.max_retry)
    sampler_config = loaded.definition.sampler
    sampler = make_sampler(sampler_config.name, loaded.space, loaded.definition.seed, sampler_config.repair,
                           sampler_config.options)
    try:
        study = optuna.create_study(study_name=loaded.name, storage=storage, sampler=sampler,
                                    directions=loaded.directions, load_if_exists=True)
    except ValueError as error:
        raise UsageError(f"storage {options.storage}: study {loaded.name!r} exists with other objectives "
                         f"({error}); use another --out or --storage") from None
    known = study.user_attrs.get(FINGERPRINT_ATTR)
    if known is None:
        study.set_user_attr(FINGERPRINT_ATTR, loaded.fingerprint())
        study.set_user_attr("objectives", [o.model_dump() for o in loaded.definition.objectives])
        study.set_user_attr("teacher", loaded.definition.teacher)
    elif known != loaded.fingerprint():
        raise UsageError(f"study {loaded.name!r} in {options.storage} was created from a different definition "
                         f"(fingerprint {known} != {loaded.fingerprint()}: teacher, space, data, upcycle, proxy, "
                         "probes, objectives, memory or seed changed); use another --out or --storage")
    return study


def _write_folder(loaded: LoadedStudy, options: Options) -> None:
    from hylo_model import __version__

    for stale in options.folder.glob(".*.tmp-*"):  # half-written files of a driver that was killed
        if stale.is_file():
            stale.unlink()

    runs.Manifest(loaded.name, options.storage, loaded.fingerprint(),
                  [o.model_dump() for o in loaded.definition.objectives], loaded.definition.teacher,
                  loaded.definition.upcycle.options(), __version__).write(options.folder)
    runs.atomic_write_text(options.folder / "study.yaml", yaml.safe_dump(loaded.resolved(), sort_keys=False))


def _recover(study: optuna.Study, loaded: LoadedStudy, options: Options) -> None:
    """Fail and retry the trials a dead driver left RUNNING (file storage, lock held: all of them are stale)."""
    if not runs.is_file_storage(options.storage):
        fail_stale_trials(study)
        return
    retry = RetryHeartbeatStaleTrialCallback(max_retry=loaded.definition.storage.max_retry)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        fail_and_retry(study, trial, "the driver stopped while this trial ran; retried", retry)


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str,
                   retry: RetryHeartbeatStaleTrialCallback) -> None:
    storage = study._storage
    storage.set_trial_system_attr(trial._trial_id, INTERRUPTED_ATTR, reason)
    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    retry(study, storage.get_trial(trial._trial_id))


def _enqueue_baselines(study: optuna.Study, loaded: LoadedStudy) -> None:
    if study.user_attrs.get(BASELINES_ATTR):
        return
    for baseline in baselines(loaded.space):
        params = loaded.space.params_from_tokens(list(baseline.tokens))
        study.enqueue_trial(params, user_attrs={"baseline": baseline.name}, skip_if_exists=True)
    study.set_user_attr(BASELINES_ATTR, True)


def _prepare_library(study: optuna.Study, loaded: LoadedStudy, options: Options, executor: Any,
                     report: Callable[[str, dict[str, Any]], None]) -> None:
    """Build the missing blocks and sensitivities, then enqueue the exact solver's pool (once per study)."""
    from .assembly import block_scores, solve_pool
    from .executors import worker_threads
    from .library import build_library

    summary = build_library(loaded, options.folder, executor, worker_threads(loaded, options.executor), report)
    if summary.failures:
        raise RuntimeError(f"the block library is incomplete: {'; '.join(summary.failures)}")
    report("library", {"summary": summary})
    config = loaded.definition.library_config()
    if not config.pool or study.user_attrs.get(POOL_ATTR) is not None:
        return
    from .sensitivity import read_table

    scores = block_scores(read_table(options.folder)["rows"], config.kl_weight, config.probe_weight)
    pool = solve_pool(loaded.space, scores, config.pool, config.pool_distance, config.pool_cache_ratios,
                      loaded.definition.target_length)
    for item in pool:
        attrs = {"source": "solver", "solver_score": item.score}
        if item.cache_ratio is not None:
            attrs["solver_cache_ratio"] = item.cache_ratio
        study.enqueue_trial(loaded.space.params_from_tokens(list(item.tokens)), user_attrs=attrs,
                            skip_if_exists=True)
    study.set_user_attr(POOL_ATTR, len(pool))


def _make_executor(loaded: LoadedStudy, options: Options) -> Any:
    from .executors import make_executor

    return make_executor(options.executor, loaded, options.address)


class _Heartbeat:
    """Record Optuna heartbeats for the trials in flight (ask/tell does not start Optuna's own thread)."""

    def __init__(self, storage: Any, interval: int) -> None:
        self.storage = storage
        self.trial_ids: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: int) -> None:
        while not self._stop.wait(interval):
            for trial_id in list(self.trial_ids):
                self.storage.record_heartbeat(trial_id)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class _Driver:
    def __init__(self, loaded: LoadedStudy, options: Options, study: optuna.Study, executor: Any,
                 report: Callable[[str, dict[str, Any]], None], heartbeat: _Heartbeat | None) -> None:
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
        from .executors import worker_threads

        self.threads = worker_threads(loaded, options.executor)
        # Two tiers: asked trials run the first tier's proxy; promoted layouts (keyed by negative task numbers)
        # run the study's proxy.
        self.tiered = loaded.definition.tiers is not None
        self.tier = loaded.first_kind or loaded.proxy_kind
        self.first_proxy = self.resolved["tiers"]["first"] if self.tiered else None
        self.promoting: dict[int, FrozenTrial] = {}
        self.promotions: list[FrozenTrial] | None = None
        self.promoted_number = 0

    def _counted(self) -> int:
        counts = trial_counts(self.study)
        return counts["counted"] - counts["promoted"]

    def _asking(self, counted: int) -> bool:
        return (counted + len(self.inflight) < self.options.trials and not self.exhausted and not self._broken()
                and (self.exhaustive or self.skips < MAX_SKIPS))

    def _busy(self) -> int:
        return len(self.inflight) + len(self.promoting)

    def loop(self) -> str:
        try:
            while True:
                counted = self._counted()
                while self._busy() < self.executor.capacity and self._asking(counted):
                    self._ask_one()
                if self.tiered and not self.inflight and not self._asking(counted):
                    self._promote()
                if not self._busy():
                    break
                for number, record in self.executor.wait(timeout=5.0):
                    if number in self.promoting:
                        self._tell_promoted(self.promoting.pop(number), record)
                    else:
                        self._tell(number, record)
                if self.heartbeat is not None:
                    fail_stale_trials(self.study)
        except KeyboardInterrupt:
            for trial, _, _ in self.inflight.values():
                fail_and_retry(self.study, trial.study._storage.get_trial(trial._trial_id),
                               "the driver was interrupted while this trial ran; retried", self.retry)
            raise
        counted = self._counted()
        promoted = f"; {trial_counts(self.study)['promoted']} promoted to {self.loaded.proxy_kind}" \
            if self.tiered else ""
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
        for key, value in constraints.items():
            trial.set_constraint(key, value)
        frozen = self.study._storage.get_trial(trial._trial_id)
        # Few, grouped attrs: every one is a storage round trip (a commit on SQLite).
        # Constraint values also go here: Optuna keeps its own copy in system attrs, which dashboards may not show.
        run = {"seed": loaded.definition.seed, "hylo_version": _version(), "constraints": constraints,
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
            self.heartbeat.trial_ids.add(trial._trial_id)
        self.executor.submit(trial.number, task)

    def _duplicate_of(self, code: str, number: int) -> int | None:
        for other_number, (_, other, _) in self.inflight.items():
            if other == code:
                return other_number
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)):
            if t.number != number and t.user_attrs.get("layout") == code and INTERRUPTED_ATTR not in t.system_attrs:
                return t.number
        return None

    def _tell(self, number: int, record: dict[str, Any]) -> None:
        trial, _, memory = self.inflight.pop(number)
        if self.heartbeat is not None:
            self.heartbeat.trial_ids.discard(trial._trial_id)
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
                                                                   "traceback") if k in record}}
        attrs.update({k: record[k] for k in ("metrics", "losses", "layer_table", "probe_table", "failure")
                      if k in record})
        values = None
        failure = record.get("failure")
        if record.get("status") == "ok":
            metrics = {**memory, **record.get("metrics", {})}
            values = [metrics.get(m, math.nan) for m in self.loaded.metrics]
            bad = [m for m, v in zip(self.loaded.metrics, values) if not math.isfinite(v)]
            if bad:
                failure = f"nan: objective {', '.join(bad)} is not finite"
        if not failure and values is None:
            failure = "exception: the worker returned no result"
        if failure:
            attrs["failure"] = failure
        return attrs, values, failure

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
            self.promoted_number -= 1
            number = self.promoted_number
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
        frozen = optuna.trial.create_trial(
            state=TrialState.FAIL if failure else TrialState.COMPLETE, values=None if failure else values,
            params=parent.params, distributions=parent.distributions, user_attrs=attrs,
            constraints=dict(parent.constraints))
        self.study.add_trial(frozen)
        # The stored trial (numbered by the storage), found by its parent: another driver may share the storage.
        self._reported(next(t for t in reversed(self.study.get_trials(deepcopy=False))
                            if t.user_attrs.get("promoted_from") == parent.number))

    def _finish(self, trial: optuna.Trial, values: list[float] | None = None, state: TrialState | None = None) -> None:
        try:
            self.study.tell(trial, values, state=state)
        except RuntimeError as error:
            # BruteForce/Grid call study.stop() when the space is exhausted, which only works inside optimize();
            # the trial is stored before that call, so the signal is all that is lost: keep it.
            if "Study.stop" not in str(error):
                raise
            self.exhausted = True
        self._reported(self.study._storage.get_trial(trial._trial_id))

    def _reported(self, frozen: FrozenTrial) -> None:
        """After a trial is stored: the trials table rewritten, and the trial reported with the study's counts."""
        write_trials_table(self.study, self.options.folder / "trials.parquet", self.loaded.metrics)
        counts = trial_counts(self.study)
        counts["running"] = self._busy()
        counts["front"] = len(pareto_front(self.study))
        self.report("trial", {"trial": frozen, "counts": counts})


def _version() -> str:
    from hylo_model import __version__

    return __version__
