"""The Ray executor on a real two-node cluster started on this machine: a head node and a second node joining it,
one CPU each, the driver joining with --address. Trials must run on both nodes.

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
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

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
    for sig, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            if sig == signal.SIGKILL:
                return
        except subprocess.TimeoutExpired:
            continue
    # The leader exited on SIGTERM; its group (raylet, gcs, workers) may still be stopping: finish it.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _nodes(address: str, env: dict[str, str]) -> int:
    status = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", "--address", address],
                            env=env, capture_output=True, text=True, timeout=60)
    return status.stdout.count(" node_")


@pytest.fixture
def two_nodes(tmp_path):
    # A short temp dir: Ray's unix socket paths live under it and must stay below ~107 characters.
    temp = Path(tempfile.mkdtemp(prefix="hylo-ray-", dir="/tmp"))
    env = cli_env(tmp_path / "runs")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    started = []
    try:
        started.append(_ray(["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", str(temp)],
                            env, tmp_path / "head.log"))
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        started.append(_ray(["--address", address], env, tmp_path / "node.log"))
        # `ray start` prints this once the node's processes are up; `ray status` (seconds per call) then confirms
        # the head has registered it.
        while time.time() < deadline and "Ray runtime started" not in (tmp_path / "node.log").read_text():
            time.sleep(0.3)
        while time.time() < deadline and _nodes(address, env) < 2:
            time.sleep(0.5)
        assert _nodes(address, env) == 2, (tmp_path / "node.log").read_text()[-2000:]
        yield address
    finally:
        for process in reversed(started):
            _stop(process)
        shutil.rmtree(temp, ignore_errors=True)


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
    assert "8 blocks in 2 tasks (ray executor)" in built.stdout and "8 blocks: 8 trained" in built.stdout
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
