"""The driver keeps the storage, the table and the counts honest when work is lost: a lost worker's trial is retried
and not counted; a retried layout counts as evaluated; the Parquet table matches the storage after SIGINT and
SIGTERM (how batch schedulers stop jobs), which both fail and retry the trial in flight."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from hylo_search.executors.local import LocalExecutor
from hylo_search.search.run import options_for, run_study
from hylo_search.search.storage import open_study_folder
from hylo_search.search.trials import INTERRUPTED_ATTR, status_of, trial_counts
from hylo_search.study import load_study
from hylo_search.worker.tasks import Failure

from .helpers import cli_env, write_study

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.WARNING)


class LosesOneTask(LocalExecutor):
    """The local executor, except that its first task comes back as a lost worker's record."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: str | None = None

    def wait(self, timeout: float):
        if self._pending and self.lost is None:
            number, task = self._pending.pop(0)
            self.lost = ",".join(task.tokens)
            return [(number, {"number": number, "node": "node-that-died",
                              **Failure("lost", "NodeDiedError: the node died").fields()})]
        return super().wait(timeout)


def test_a_lost_worker_trial_is_retried_and_not_counted(tmp_path):
    path = write_study(tmp_path, trials=5)
    loaded = load_study(path)
    executor = LosesOneTask()
    summary = run_study(loaded, options_for(loaded, out=str(tmp_path / "run")),
                        executor_factory=lambda *_: executor)
    study = open_study_folder(str(tmp_path / "run")).study
    trials = study.get_trials(deepcopy=False)
    lost = [t for t in trials if t.state == TrialState.FAIL]
    assert len(lost) == 1 and lost[0].system_attrs[INTERRUPTED_ATTR].startswith("lost: NodeDiedError")
    assert lost[0].user_attrs["layout"] == executor.lost
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == lost[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == lost[0].params
    counts = trial_counts(study)
    assert counts["interrupted"] == 1 and counts["failed"] == 0 and counts["counted"] == 5
    assert summary.stop_reason == "reached 5 trials"
    layouts = [t.user_attrs["layout"] for t in trials if t.state == TrialState.COMPLETE]
    assert len(layouts) == len(set(layouts)) == 5


def test_a_retried_layout_counts_as_evaluated(tmp_path):
    path = write_study(tmp_path, trials=3)
    loaded = load_study(path)
    run_study(loaded, options_for(loaded, out=str(tmp_path / "run")))
    study = open_study_folder(str(tmp_path / "run")).study
    params = {"layer_00": "A", "layer_01": "G", "layer_02": "G", "layer_03": "A"}
    study.enqueue_trial(params)
    orphan = study.ask(loaded.space.distributions())  # a driver died while this trial ran
    assert orphan.params == params
    orphan.set_user_attr("layout", "A,G,G,A")
    run_study(loaded, options_for(loaded, out=str(tmp_path / "run"), trials=4))  # fails and retries the orphan
    study.enqueue_trial(params)  # the same layout proposed again
    run_study(loaded, options_for(loaded, out=str(tmp_path / "run"), trials=5))
    trials = open_study_folder(str(tmp_path / "run")).study.get_trials(deepcopy=False)
    same = [t for t in trials if t.user_attrs.get("layout") == "A,G,G,A"]
    states = sorted(t.state.name for t in same)
    assert states == ["COMPLETE", "FAIL", "PRUNED"], states  # interrupted, its retry, then a duplicate
    retry = next(t for t in same if t.state == TrialState.COMPLETE)
    duplicate = next(t for t in same if t.state == TrialState.PRUNED)
    assert duplicate.user_attrs["duplicate_of"] == retry.number
    table = pd.read_parquet(tmp_path / "run" / "trials.parquet").set_index("number")
    assert pd.isna(table.loc[retry.number, "failure"])  # it completed: no failure text copied from the orphan


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_table_matches_the_storage_after_a_signal(tmp_path, sig):
    marks = tmp_path / "marks"
    marks.mkdir()
    # The proxy marks each call as it starts, then sleeps 4 s: the signal lands inside the third trial's proxy, after
    # two completed ones (polling the storage for a RUNNING trial raced with the driver on a loaded machine).
    path = write_study(tmp_path, trials=6, proxy={"kind": "tests.search.ray_plugins:MarkedSlowProxy",
                                                  "options": {"sleep": 4, "marks": str(marks)}})
    out = tmp_path / "run"
    # The driver starts with Ctrl-C's default disposition, as a foreground job in a terminal does: a test run launched
    # in the background (`pytest … &`) has SIGINT ignored, and a child would inherit that and never see the signal.
    process = subprocess.Popen([sys.executable, "-m", "hylo_search.cli", "study", str(path), "--out", str(out)],
                               cwd=tmp_path, env=cli_env(tmp_path / "runs"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 240
    while len(list(marks.iterdir())) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # inside the third call's 4 s sleep
    assert process.poll() is None, f"the driver ended before a third trial started: {process.communicate()[1][-2000:]}"
    masks = {line.split(":")[0]: line.split()[1] for line in open(f"/proc/{process.pid}/status")
             if line.startswith(("SigBlk", "SigIgn"))}  # shown if the signal goes unseen
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, f"driver's signal masks {masks}: {err[-2000:]}"
    study = open_study_folder(str(out)).study
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == TrialState.RUNNING]  # the trial in flight was failed and retried
    table = pd.read_parquet(out / "trials.parquet").set_index("number")
    assert sorted(table.index) == [t.number for t in trials]
    for t in trials:
        assert table.loc[t.number, "status"] == status_of(t)
    assert (table["status"] == "interrupted").sum() == 1  # the trial that was running when the signal came
