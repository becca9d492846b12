"""The Ray executor on a real two-node cluster started on this machine: a head node and a second node joining it,
one CPU each, the driver joining with --address. Trials must run on both nodes; a node killed mid-trial loses that
trial, which is retried on the other. And the private cluster the executor starts by itself listens on loopback
only, and refuses a worker whose package version is not the driver's.

The nodes run as ``ray start --block`` in their own process groups, so teardown stops exactly the processes this
test started (SIGTERM, then SIGKILL, to those groups) and never touches another Ray on the machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from hylo_model.version import __version__
from hylo_search.search.trials import INTERRUPTED_ATTR
from hylo_search.worker.tasks import Failure

from .helpers import brute_force_front, cli_env, hylo, write_study


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).parent / "ray"), "start", *args, "--num-cpus", "1",
                             "--disable-usage-stats", "--object-store-memory", str(80 * 2**20), "--block"],
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    # Ray workers run in process groups of their own: remember the node's whole process tree before stopping it.
    tree = _tree(process)
    for sig, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            if sig == signal.SIGKILL:
                break
        except subprocess.TimeoutExpired:
            continue
    else:
        # The leader exited on SIGTERM; its group (raylet, gcs) may still be stopping: finish it.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _kill(tree)


def _tree(process: subprocess.Popen) -> list[psutil.Process]:
    try:
        leader = psutil.Process(process.pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill(processes: list[psutil.Process]) -> None:
    for each in processes:
        try:
            each.kill()  # SIGKILL; psutil checks the pid still belongs to the process it listed
        except psutil.NoSuchProcess:
            pass


def _nodes(address: str, env: dict[str, str]) -> int:
    status = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", "--address", address],
                            env=env, capture_output=True, text=True, timeout=60)
    return status.stdout.count(" node_")


@dataclass
class Cluster:
    address: str
    head: subprocess.Popen
    worker: subprocess.Popen  # its process group is the whole node: raylet, its agents and its Ray workers


@contextmanager
def _two_nodes(folder: Path, system_config: dict | None = None) -> Iterator[Cluster]:
    """A head and a worker node, 1 CPU each; each node's processes see ``HYLO_TEST_NODE`` = head / worker."""
    # A short temp dir: Ray's unix socket paths live under it and must stay below ~107 characters.
    temp = Path(tempfile.mkdtemp(prefix="hylo-ray-", dir="/tmp"))
    env = cli_env(folder / "runs")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head_args = ["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", str(temp)]
    if system_config:
        head_args += ["--system-config", json.dumps(system_config)]
    started = []
    try:
        started.append(_ray(head_args, {**env, "HYLO_TEST_NODE": "head"}, folder / "head.log"))
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        started.append(_ray(["--address", address], {**env, "HYLO_TEST_NODE": "worker"}, folder / "node.log"))
        # `ray start` prints this once the node's processes are up; `ray status` (seconds per call) then confirms
        # the head has registered it.
        while time.time() < deadline and "Ray runtime started" not in (folder / "node.log").read_text():
            time.sleep(0.3)
        while time.time() < deadline and _nodes(address, env) < 2:
            time.sleep(0.5)
        assert _nodes(address, env) == 2, (folder / "node.log").read_text()[-2000:]
        yield Cluster(address, *started)
    finally:
        for process in reversed(started):
            _stop(process)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """One cluster for the tests that leave it whole (the node-loss test starts its own)."""
    with _two_nodes(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster.address


def test_ray_executor_runs_trials_on_both_nodes(tmp_path, two_nodes):
    write_study(tmp_path, executor={"resources": {"num_cpus": 1}})
    runs = tmp_path / "runs"
    result = hylo(["study", "t4.yaml", "--executor", "ray", "--address", two_nodes, "--trials", "6"], tmp_path, runs,
                  timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 trial(s) at a time" in result.stdout and "t4: reached 6 trials" in result.stdout
    study = optuna.load_study(study_name="t4", storage=f"sqlite:///{runs / 't4' / 'study.db'}")
    trained = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(trained) == 6
    nodes = {t.user_attrs["result"]["node"] for t in trained}
    assert len(nodes) == 2 and not any(n.startswith("local:") for n in nodes)
    assert {t.user_attrs["result"]["hylo_version"] for t in trained} == {__version__}  # what each worker ran
    front = hylo(["pareto", "t4", "--format", "json"], tmp_path, runs)
    assert [r["trial"] for r in json.loads(front.stdout)["front"]] == \
        brute_force_front(study.trials, ["minimize", "minimize"])


def test_the_block_library_is_built_across_both_nodes_and_equals_a_local_build(tmp_path, two_nodes):
    """One task per block kind, one per node (1 CPU each); the blocks equal those of a local build, whatever
    grouping trained them."""
    from safetensors.torch import load_file
    from torch.testing import assert_close

    write_study(tmp_path, name="lib", executor={"resources": {"num_cpus": 1}}, proxy={"kind": "assembled"},
                library={"recipe": "proxy_tiny", "tokens": 512})
    runs = tmp_path / "runs"
    built = hylo(["library", "lib.yaml", "--executor", "ray", "--address", two_nodes], tmp_path, runs, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "ray executor (2 task(s) at a time)" in built.stdout and "8 blocks in 2 tasks" in built.stdout
    assert "8 blocks: 8 trained" in built.stdout
    rows = json.loads((runs / "lib" / "library.json").read_text())["rows"]
    assert len({r["node"] for r in rows}) == 2 and not any(r["node"].startswith("local:") for r in rows)
    local = hylo(["library", "lib.yaml", "--executor", "local", "--out", str(tmp_path / "local")], tmp_path, runs,
                 timeout=300)
    assert local.returncode == 0, local.stdout + local.stderr
    for row in json.loads((tmp_path / "local" / "library.json").read_text())["rows"]:
        a = load_file(str(next((runs / "lib" / "cache").rglob(f"{row['key']}.safetensors"))))
        b = load_file(str(next((tmp_path / "local" / "cache").rglob(f"{row['key']}.safetensors"))))
        for name in a:
            assert_close(a[name], b[name], rtol=1e-4, atol=1e-6)


def test_a_node_lost_mid_trial_is_recorded_lost_and_its_trial_retried_on_the_other(tmp_path):
    """Kill -9 the worker node's whole process group while its second trial runs (1 s of sleep, then the stand-in proxy): that trial fails as ``lost``
    (not counted), its retry runs on the head, and the study still reaches 6 completed trials, no layout twice."""
    marks = tmp_path / "marks"
    marks.mkdir()
    write_study(tmp_path, name="loss", executor={"resources": {"num_cpus": 1}},
                proxy={"kind": "tests.search.ray_plugins:MarkedSlowProxy",
                       "options": {"sleep": 1.0, "marks": str(marks)}})
    runs = tmp_path / "runs"
    # Ray declares a node dead after missed health checks: here 3 missed at 1 s (defaults: 5 at 3 s).
    with _two_nodes(tmp_path, {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}) as cluster:
        log = tmp_path / "driver.log"
        driver = subprocess.Popen([sys.executable, "-m", "hylo_search.cli", "study", "loss.yaml", "--executor", "ray",
                                   "--address", cluster.address, "--trials", "6"], cwd=tmp_path, env=cli_env(runs),
                                  stdout=log.open("w"), stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while len(list(marks.glob("*.worker"))) < 2:  # the worker finished one trial and started another
                assert driver.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.1)
            time.sleep(0.3)  # inside the 1 s proxy
            _kill(_tree(cluster.worker))  # kill -9 the whole node: its raylet, agents and Ray workers
            assert driver.wait(timeout=300) == 0, log.read_text()[-3000:]
        finally:
            if driver.poll() is None:
                driver.kill()
    assert "loss: reached 6 trials" in log.read_text()
    where = {int(m.name.split(".")[0]): m.name.split(".")[1] for m in marks.iterdir()}
    trials = optuna.load_study(study_name="loss", storage=f"sqlite:///{runs / 'loss' / 'study.db'}").trials
    # Lost, like a trial its driver left running: FAIL with the reason in hylo:interrupted, not counted, retried.
    (lost,) = [t for t in trials if t.state == TrialState.FAIL and t.system_attrs.get(INTERRUPTED_ATTR, "")
               .startswith("lost: ")]
    assert where[lost.number] == "worker" and "failure" not in lost.user_attrs
    assert lost.number == max(n for n, node in where.items() if node == "worker")
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params and where[retry.number] == "head"
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 == len({t.user_attrs["layout"] for t in complete})
    nodes = {where[t.number]: set() for t in complete}
    for t in complete:
        nodes[where[t.number]].add(t.user_attrs["result"]["node"])
    assert len(nodes["head"]) == len(nodes["worker"]) == 1 and nodes["head"] != nodes["worker"]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    print(f"node loss: {len(complete)} completed ({sum(where[t.number] == 'worker' for t in complete)} on the "
          f"worker), 1 lost (trial {lost.number}: {lost.system_attrs[INTERRUPTED_ATTR]}), retried as trial {retry.number} "
          f"on the head; {len(trials)} trials in the storage")


LOCAL_CLUSTER = """
import json, types
import psutil
from hylo_search.executors import ray as ray_executor

executor = ray_executor.RayExecutor(types.SimpleNamespace(num_cpus=1, num_gpus=0, memory_gb=None))
import ray  # after the executor: it imports Ray itself, with the single-machine switch set for that import
ours = {process.pid for process in psutil.Process().children(recursive=True)}
listening = sorted({c.laddr.ip for c in psutil.net_connections("inet") if c.status == psutil.CONN_LISTEN
                    and c.pid in ours})
nodes = [node["NodeManagerAddress"] for node in ray.nodes()]
ray_executor.__version__ = "0.0.0-other"  # from now on this driver sends another version than its workers have
executor.submit(7, types.SimpleNamespace(number=7))
(number, record), = executor.wait(timeout=120)
executor.close()
print(json.dumps({"nodes": nodes, "listening": listening, "number": number, "record": record}))
"""


def test_a_local_cluster_listens_on_loopback_only_and_a_version_mismatch_is_refused(tmp_path):
    """The cluster the Ray executor starts by itself (no --address) binds 127.0.0.1; a worker whose package version
    differs from the driver's returns a failure naming both, without running the task."""
    done = subprocess.run([sys.executable, "-c", LOCAL_CLUSTER], cwd=tmp_path, env=cli_env(tmp_path / "runs"),
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["nodes"] == ["127.0.0.1"]
    assert seen["listening"] and set(seen["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
    failure = Failure.of(seen["record"])
    assert seen["number"] == seen["record"]["number"] == 7 and failure.kind == "exception"
    assert f"runs hylo-search {__version__}, the driver 0.0.0-other; install the same version on every node" \
        in failure.message and failure.message.startswith("version mismatch: node ")
