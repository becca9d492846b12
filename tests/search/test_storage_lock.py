"""One driver per storage: a second study folder pointed at the first one's SQLite file is refused (exit 2, one
line naming the running driver and the lock), and the first driver's work is left intact."""

from __future__ import annotations

import contextlib
import hashlib
import io
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from hylo_search.cli import main
from hylo_search.scoring import UpcycleKL
from hylo_search.search.storage import DriverLock

from .helpers import cli_env, write_study


class WaitProxy(UpcycleKL):
    """The stand-in proxy, run once the file ``options.release`` exists, so a test can act while a driver is
    mid-trial (it writes ``options.waiting`` first; it waits at most two minutes, so a failed test cannot hang)."""

    def __call__(self, ctx):
        Path(self.config.options["waiting"]).touch()
        release = Path(self.config.options["release"])
        deadline = time.monotonic() + 120
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return super().__call__(ctx)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_folders_sharing_one_sqlite_file_cannot_both_drive(tmp_path, capsys):
    release, waiting = tmp_path / "release", tmp_path / "waiting"
    study = write_study(tmp_path, trials=3, proxy={"kind": "tests.search.test_storage_lock:WaitProxy",
                                                   "options": {"release": str(release), "waiting": str(waiting)}})
    first, second = tmp_path / "first", tmp_path / "second"
    driver = subprocess.Popen([sys.executable, "-m", "hylo_search.cli", "study", str(study), "--out", str(first)],
                              cwd=tmp_path, env=cli_env(tmp_path / "runs"), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        lock = DriverLock.for_storage(f"sqlite:///{first / 'study.db'}").path
        deadline = time.monotonic() + 180
        while not waiting.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert waiting.exists(), driver.stderr.read() if driver.poll() is not None else "no trial started"
        assert DriverLock.file_is_held(lock)  # the first driver is mid-trial, holding the storage's lock
        before = _digests(first)
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["study", str(study), "--out", str(second), "--storage", f"sqlite:///{first / 'study.db'}"])
        err = capsys.readouterr().err
        # Besides the error, only the notice every plug-in load prints (where the study's code came from).
        lines = [line for line in err.strip().splitlines() if not line.startswith("hylo-search: plug-in ")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert f"another driver (pid {driver.pid}) is running this study (lock {lock})" in lines[0]
        assert _digests(first) == before
        assert not (second / "manifest.json").exists() and not (second / "study.db").exists()
    finally:
        release.touch()
        out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, out + err
    trials = optuna.load_study(study_name="t4", storage=f"sqlite:///{first / 'study.db'}").trials
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    assert len(counted) == 3 and all(t.state == TrialState.COMPLETE for t in counted)
    assert not [t.number for t in trials if "hylo:interrupted" in t.system_attrs or t.state == TrialState.RUNNING]
