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
completes it with the same executor, and enqueues once the baselines placed by its measured scores
(:func:`~hylo_search.space.baselines.measured_baselines`) and the exact solver's pool (:mod:`.assembly`).
With ``tiers``, the asked trials are the first tier (``tiers.first``, the ``assembled`` proxy by default; ``--trials`` counts
them); when no more are asked, the ``tiers.promote`` best first-tier layouts without a second-tier result run with
the study's ``proxy``, and each comes back as a trial of its own (``study.add_trial``, user attrs ``tier`` and
``promoted_from``; a driver that dies meanwhile loses nothing but the work in flight).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from hylo_model.version import __version__

from .. import paths
from ..errors import UsageError
from ..executors import make_executor, worker_threads
from ..library.build import build_library
from ..library.sensitivity import read_table
from ..library.solver import block_scores, solve_pool
from ..space.baselines import baselines, measured_baselines
from ..study import LoadedStudy
from . import storage as storages
from .driver import Driver, Heartbeat, fail_and_retry
from .optuna_compat import storage_of
from .sampler import make_sampler
from .trials import name_metrics, pareto_front, trial_counts, write_trials_table

FINGERPRINT_ATTR = "hylo:fingerprint"
BASELINES_ATTR = "hylo:baselines_enqueued"
POOL_ATTR = "hylo:pool_enqueued"
MEASURED_BASELINES_ATTR = "hylo:measured_baselines_enqueued"


@dataclass
class Options:
    trials: int
    executor: str
    address: str | None
    storage: str
    folder: Path
    callbacks: list[Callable[[optuna.Study, Any], None]] = field(default_factory=list)  # tracking.py: per trial


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
    folder = paths.study_dir(loaded.name, out)
    url = storage or definition.storage.url or paths.default_storage_url(folder)
    storages.check_storage_url(url)
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
    # The storage's lock first: a storage another driver holds is refused before this study's folder is created.
    locks = [lock for lock in (storages.DriverLock.for_storage(options.storage, loaded.name),
                               storages.DriverLock(folder)) if lock]
    executor = None
    heartbeat: Heartbeat | None = None
    study = None
    try:
        for lock in locks:
            lock.acquire()
        study = _open_study(loaded, options)
        _write_folder(loaded, options)
        _recover(study, loaded, options)
        _enqueue_baselines(study, loaded)
        write_trials_table(study, folder / paths.TRIALS_TABLE, loaded.metrics)  # as the storage holds it now
        executor = (executor_factory or _make_executor)(loaded, options)
        if loaded.uses_library():
            _prepare_library(study, loaded, options, executor, report)
        storage = storage_of(study)
        if getattr(storage, "get_heartbeat_interval", lambda: None)():
            heartbeat = Heartbeat(storage, loaded.definition.storage.heartbeat_interval)
        driver = Driver(loaded, options, study, executor, report, heartbeat, worker_threads(loaded, options.executor))
        report("started", {"folder": str(folder), "storage": options.storage, "capacity": executor.capacity,
                           "target": options.trials, "counts": trial_counts(study)})
        with _sigterm_as_interrupt():
            stop_reason = driver.loop()
        counts = trial_counts(study)
        front = [t.number for t in pareto_front(study)]
        report("finished", {"counts": counts, "stop_reason": stop_reason, "front": front})
        return Summary(folder, options.storage, counts, stop_reason, front)
    finally:
        if study is not None:  # after a normal end, Ctrl-C or SIGTERM alike: the table matches the storage
            write_trials_table(study, folder / paths.TRIALS_TABLE, loaded.metrics)
        if heartbeat is not None:
            heartbeat.stop()
        if executor is not None:
            executor.close()
        for lock in locks:
            lock.release()


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (how batch schedulers stop a job) handled like Ctrl-C: the driver fails and retries the trials in
    flight, and the table is rewritten. Only the main thread can install a handler; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _open_study(loaded: LoadedStudy, options: Options) -> optuna.Study:
    config = loaded.definition.storage
    storage = storages.make_storage(options.storage, config.heartbeat_interval, config.grace_period, config.max_retry)
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
    name_metrics(study, loaded.metrics)  # dashboards and plot_pareto_front say proxy_kl, not "Objective 0"
    return study


def _write_folder(loaded: LoadedStudy, options: Options) -> None:
    # Half-written files of a driver that was killed: hylo_model.atomic names them .<name>.<random>.tmp<suffix>.
    # Only the driver's own files (it holds the lock); another command may be writing its own file here now.
    for name in (paths.MANIFEST, paths.STUDY_YAML, paths.TRIALS_TABLE):
        for stale in options.folder.glob(f".{name}.*.tmp*"):
            if stale.is_file():
                stale.unlink()

    storages.Manifest(loaded.name, options.storage, loaded.fingerprint(),
                  [o.model_dump() for o in loaded.definition.objectives], loaded.definition.teacher,
                  loaded.definition.upcycle.options(), __version__).write(options.folder)
    paths.atomic_write_text(options.folder / paths.STUDY_YAML, yaml.safe_dump(loaded.resolved(), sort_keys=False))


def _recover(study: optuna.Study, loaded: LoadedStudy, options: Options) -> None:
    """Fail and retry the trials a dead driver left RUNNING (file storage or PostgreSQL, lock held: all of them are
    stale)."""
    if not storages.single_driver(options.storage):
        fail_stale_trials(study)
        return
    retry = RetryHeartbeatStaleTrialCallback(max_retry=loaded.definition.storage.max_retry)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        fail_and_retry(study, trial, "the driver stopped while this trial ran; retried", retry)


def _enqueue_baselines(study: optuna.Study, loaded: LoadedStudy) -> None:
    if study.user_attrs.get(BASELINES_ATTR):
        return
    for baseline in baselines(loaded.space):
        params = loaded.space.params_from_tokens(list(baseline.tokens))
        study.enqueue_trial(params, user_attrs={"baseline": baseline.name}, skip_if_exists=True)
    study.set_user_attr(BASELINES_ATTR, True)


def _prepare_library(study: optuna.Study, loaded: LoadedStudy, options: Options, executor: Any,
                     report: Callable[[str, dict[str, Any]], None]) -> None:
    """Build the missing blocks and sensitivities, then enqueue (once per study) the baselines placed by the
    measured scores and the exact solver's pool."""
    summary = build_library(loaded, options.folder, executor, worker_threads(loaded, options.executor), report)
    if summary.failures:
        raise RuntimeError(f"the block library is incomplete: {'; '.join(summary.failures)}")
    report("library", {"summary": summary})
    if not study.user_attrs.get(MEASURED_BASELINES_ATTR):
        for baseline in measured_baselines(loaded.space, read_table(options.folder)):
            study.enqueue_trial(loaded.space.params_from_tokens(list(baseline.tokens)),
                                user_attrs={"baseline": baseline.name}, skip_if_exists=True)
        study.set_user_attr(MEASURED_BASELINES_ATTR, True)
    config = loaded.definition.library_config()
    if not config.pool or study.user_attrs.get(POOL_ATTR) is not None:
        return
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
    return make_executor(options.executor, loaded, options.address)


