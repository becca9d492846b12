"""The kill -9 resume test on any storage URL (journal, PostgreSQL): a driver killed with SIGKILL mid-trial, then
the same command rerun, must keep every completed trial, fail and retry the one in flight, and reach the count
with no layout trained twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hylo_search.search.storage import make_storage

from .helpers import cli_env, hylo, write_study

NAME = "slow"


def _study(storage: str) -> optuna.Study:
    return optuna.load_study(study_name=NAME, storage=make_storage(storage))


def _wait(driver: subprocess.Popen, folder: Path, storage: str, ready: Callable[[list[FrozenTrial]], bool],
          what: str, timeout: float = 180) -> list[FrozenTrial]:
    """Poll the study (read only) until ``ready(trials)``; the study is opened once its driver wrote the manifest."""
    deadline = time.time() + timeout
    study = None
    trials: list[FrozenTrial] = []
    while time.time() < deadline:
        if driver.poll() is not None:
            pytest.fail(f"the driver exited ({driver.returncode}) before {what}: {[t.state for t in trials]}")
        if study is None and (folder / "manifest.json").is_file():
            study = _study(storage)
        if study is not None:
            trials = study.get_trials(deepcopy=False)
            if ready(trials):
                return trials
        time.sleep(0.1)
    pytest.fail(f"the driver never reached {what}: {[t.state for t in trials]}")


def _mid_trial(trials: list[FrozenTrial]) -> bool:
    return sum(t.state == TrialState.COMPLETE for t in trials) >= 2 and \
        sum(t.state == TrialState.RUNNING for t in trials) == 1


def kill_9_mid_trial_then_resume(tmp_path: Path, storage: str,
                                 while_running: Callable[[subprocess.Popen], None] | None = None) -> list[FrozenTrial]:
    """Run a 6-trial study of slow trials (0.8 s each) on ``storage``; once two trials are complete and a third
    has been running for 0.4 s, kill -9 the driver and rerun it. ``while_running(driver)`` is called once a trial
    is complete, before the kill. Returns the final trials."""
    write_study(tmp_path, name=NAME, proxy={"kind": "tests.search.plugins:SlowProxy", "options": {"sleep": 0.8}})
    runs = tmp_path / "runs"
    args = ["study", f"{NAME}.yaml", "--trials", "6", "--storage", storage]
    driver = subprocess.Popen([sys.executable, "-m", "hylo_search.cli", *args], cwd=tmp_path, env=cli_env(runs),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = runs / NAME
    try:
        if while_running is not None:
            _wait(driver, folder, storage, lambda ts: any(t.state == TrialState.COMPLETE for t in ts),
                  "a completed trial")
            while_running(driver)
        while True:
            running = [t.number for t in _wait(driver, folder, storage, _mid_trial, "2 completed + 1 running")
                       if t.state == TrialState.RUNNING]
            time.sleep(0.4)  # inside the 0.8 s proxy: the trial is truly in flight
            if [t.number for t in _study(storage).trials if t.state == TrialState.RUNNING] == running:
                break
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    trials = _study(storage).trials
    before = {t.number: (t.user_attrs["layout"], t.values) for t in trials if t.state == TrialState.COMPLETE}
    (orphan,) = [t.number for t in trials if t.state == TrialState.RUNNING]
    rerun = hylo(args, tmp_path, runs)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming with" in rerun.stdout and f"{NAME}: reached 6 trials" in rerun.stdout
    trials = _study(storage).trials
    for number, (layout, values) in before.items():
        assert trials[number].state == TrialState.COMPLETE
        assert (trials[number].user_attrs["layout"], trials[number].values) == (layout, values)
    assert trials[orphan].state == TrialState.FAIL and "hylo:interrupted" in trials[orphan].system_attrs
    assert [t.state for t in trials if t.system_attrs.get("failed_trial") == orphan] == [TrialState.COMPLETE]
    complete = [t.user_attrs["layout"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 == len(set(complete))
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    return trials
