"""Studies on a real PostgreSQL server (started by tests/search/postgres.py; CI installs the server): kill -9 and
resume, a second driver refused by the study's advisory lock, the reports, stock Optuna and optuna-dashboard
reading the database, and the same study giving the same values on SQLite, the journal file and PostgreSQL."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from optuna.trial import TrialState

from hylo_search.cli import main
from hylo_search.errors import UsageError
from hylo_search.search.run import options_for, run_study
from hylo_search.search.storage import AdvisoryLock
from hylo_search.study import load_study

from .helpers import brute_force_front, cli_env, hylo, write_study
from .postgres import postgres_server
from .resume import NAME, kill_9_mid_trial_then_resume

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def server():
    with postgres_server() as running:
        yield running


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_study_on_postgresql_resumes_after_kill_9_and_refuses_a_second_driver(tmp_path, server, capsys):
    url = server.create_database("resume")

    def second_driver(driver):
        # Another folder on the same study: only the server's lock can stop it (exit 2, one line, the holder named).
        code = main(["study", str(tmp_path / f"{NAME}.yaml"), "--trials", "6", "--storage", url,
                     "--out", str(tmp_path / "second")])
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert code == 2 and len(errors) == 1, errors
        assert errors[0].startswith(f"hylo-search study: error: another driver (hylo-search driver pid {driver.pid} on ")
        assert f"running study '{NAME}'" in errors[0]

    trials = kill_9_mid_trial_then_resume(tmp_path, url, while_running=second_driver)
    folder, runs = tmp_path / "runs" / NAME, tmp_path / "runs"

    # The reports read the database the manifest names, not the Parquet table.
    (folder / "trials.parquet").unlink()
    front = hylo(["pareto", str(folder), "--format", "json"], tmp_path, runs)
    assert front.returncode == 0, front.stderr
    numbers = [row["trial"] for row in json.loads(front.stdout)["front"]]
    assert numbers == brute_force_front(trials, ["minimize", "minimize"])
    shown = hylo(["show", str(folder), str(numbers[0])], tmp_path, runs)
    assert shown.returncode == 0 and f"layout  {trials[numbers[0]].user_attrs['layout']}" in shown.stdout
    exported = hylo(["export", str(folder), "--trial", str(numbers[0]), "--out", str(tmp_path / "best.yaml")],
                    tmp_path, runs)
    assert exported.returncode == 0, exported.stderr
    assert trials[numbers[0]].user_attrs["layout"].split(",")[0] in (tmp_path / "best.yaml").read_text()

    # Stock Optuna, from the URL alone.
    stock = optuna.load_study(study_name=NAME, storage=url)
    assert [(t.number, t.state, t.values) for t in stock.trials] == [(t.number, t.state, t.values) for t in trials]

    # optuna-dashboard on 127.0.0.1 (bounded: 60 s to answer): its API lists the study and serves its trials.
    port = _free_port()
    dashboard = subprocess.Popen([sys.executable, "-m", "hylo_search.cli", "dashboard", str(folder), "--port",
                                  str(port)], cwd=tmp_path, env=cli_env(runs), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    try:
        summaries = _get_json(f"http://127.0.0.1:{port}/api/studies", dashboard)["study_summaries"]
        (summary,) = [s for s in summaries if s["study_name"] == NAME]
        assert summary["directions"] == ["minimize", "minimize"]
        detail = _get_json(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}", dashboard)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
    assert [(t["number"], t["state"]) for t in detail["trials"]] == \
        [(t.number, t.state.name.capitalize()) for t in trials]


def _get_json(url: str, server: subprocess.Popen, seconds: float = 60) -> dict:
    deadline = time.time() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            assert server.poll() is None, "optuna-dashboard exited"
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def test_the_advisory_lock_is_per_study_and_freed_on_release(server):
    url = server.create_database("locks")
    first, same, other = AdvisoryLock(url, "a"), AdvisoryLock(url, "a"), AdvisoryLock(url, "b")
    first.acquire()
    try:
        other.acquire()  # another study in the same database runs beside it
        other.release()
        with pytest.raises(UsageError, match="another driver .* is running study 'a'"):
            same.acquire()
    finally:
        first.release()
    same.acquire()
    same.release()
    with pytest.raises(UsageError, match="cannot take the study lock: .*connection"):  # no server there
        AdvisoryLock(f"postgresql+psycopg://hylo@/locks?host={server.folder}/nowhere", "a").acquire()


def test_the_same_study_gives_the_same_trials_on_sqlite_journal_and_postgresql(tmp_path, server):
    """12 trials of the small test study (random 4-layer teacher), local executor, seed 0, one storage each."""
    path = write_study(tmp_path, trials=12)
    storages = {"sqlite": f"sqlite:///{tmp_path / 'sqlite' / 'study.db'}",
                "journal": f"journal:{tmp_path / 'journal.log'}",
                "postgresql": server.create_database("same")}
    seen = {}
    for kind, url in storages.items():
        loaded = load_study(path)
        summary = run_study(loaded, options_for(loaded, storage=url, executor="local", out=str(tmp_path / kind)))
        assert summary.counts["counted"] == 12, (kind, summary.stop_reason)
        study = optuna.load_study(study_name="t4", storage=url if kind != "journal" else
                                  optuna.storages.JournalStorage(
                                      optuna.storages.journal.JournalFileBackend(url[len("journal:"):])))
        seen[kind] = [(t.number, t.state, t.params, t.values, t.user_attrs.get("layout")) for t in study.trials]
    assert seen["sqlite"] == seen["journal"] == seen["postgresql"]
    assert sum(state == TrialState.COMPLETE for _, state, *_ in seen["sqlite"]) == 12
