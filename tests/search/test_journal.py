"""Optuna's journal file storage (``--storage journal:PATH``), the choice for a filesystem that every driver machine
shares: a driver killed with SIGKILL mid-trial resumes like one on SQLite."""

from __future__ import annotations

from .resume import kill_9_mid_trial_then_resume


def test_kill_9_then_rerun_on_the_journal_storage(tmp_path):
    journal = tmp_path / "shared" / "journal.log"
    journal.parent.mkdir()
    kill_9_mid_trial_then_resume(tmp_path, f"journal:{journal}")
    # The driver's lock lives beside the journal, apart from the journal's own write lock (journal.log.lock,
    # a symlink held only while appending), which no killed or finished driver leaves behind.
    assert sorted(p.name for p in journal.parent.iterdir()) == ["journal.log", "journal.log.driver.lock"]
