"""The executor contract, run against every executor: the same tasks give the same records, failures come back as
records of the failure kinds (never as exceptions), and the interface behaves the same (capacity, wait with nothing
pending, close)."""

from __future__ import annotations

import os

import pytest

from hylo_search.executors import EXECUTORS, make_executor, run_all
from hylo_search.study import load_study
from hylo_search.worker.tasks import FAILURE_KINDS, Failure, TrialTask

from .helpers import write_study

LAYOUTS = [["A", "A", "A", "A"], ["A", "G", "L8", "A"], ["G", "A", "A", "A"]]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contract")
    return load_study(write_study(folder, proxy={"kind": "tests.search.plugins:FlakyProxy",
                                                 "options": {"fail": ["G,A,A,A"]}})), folder / "study"


@pytest.fixture(scope="module")
def tasks(study):
    loaded, folder = study
    return [TrialTask(loaded.resolved(), str(folder), number, tokens, seed=0, threads=1)
            for number, tokens in enumerate(LAYOUTS)]


def _run(name: str, loaded, tasks: list[TrialTask]) -> dict[int, dict]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    executor = make_executor(name, loaded)
    try:
        assert executor.capacity >= 1
        assert executor.wait(timeout=0.1) == []  # nothing pending: no record, no error
        return dict(run_all(executor, tasks, poll=1.0))
    finally:
        executor.close()


@pytest.fixture(scope="module")
def records(study, tasks):
    return {name: _run(name, study[0], tasks) for name in EXECUTORS}


@pytest.mark.parametrize("name", EXECUTORS)
def test_every_task_comes_back_once_as_a_record(records, tasks, name):
    assert sorted(records[name]) == list(range(len(tasks)))
    for number, record in records[name].items():
        assert record["number"] == number
        assert record["status"] in ("ok", "fail")


@pytest.mark.parametrize("name", EXECUTORS)
def test_a_failing_task_is_a_failure_record_of_a_known_kind(records, name):
    failure = Failure.of(records[name][2])
    assert failure is not None and failure.kind in FAILURE_KINDS
    assert failure.kind == "exception" and "injected failure for G,A,A,A" in failure.text
    assert records[name][2]["failure"] == failure.text and records[name][2]["failure_kind"] == "exception"
    assert "Traceback" in records[name][2]["traceback"] or "line" in records[name][2]["traceback"]


def test_executors_give_identical_metrics(records):
    local, ray = records["local"], records["ray"]
    for number in (0, 1):
        assert local[number]["status"] == ray[number]["status"] == "ok"
        assert local[number]["metrics"] == ray[number]["metrics"]  # exact: same code, same seed, one thread
    assert local[0]["node"].startswith("local:") and not ray[0]["node"].startswith("local:")
