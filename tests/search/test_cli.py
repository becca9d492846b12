"""`hylo-search` search commands through a subprocess: study, pareto, show, export, list, dashboard, bad input
(one line, exit 2, nothing written) and a driver killed with SIGKILL mid-study, then resumed."""

from __future__ import annotations

import importlib.util
import json

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hylo_model import upcycle
from hylo_search.define.layout_files import read_layout
from hylo_search.errors import UsageError
from hylo_search.results.trial import export_layout

from .helpers import brute_force_front, hylo, write_study
from .resume import NAME, kill_9_mid_trial_then_resume

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    write_study(folder)
    runs = folder / "runs"
    done = hylo(["study", "t4.yaml", "--trials", "6", "--executor", "local"], folder, runs)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder, runs, done.stdout


def _study(runs, name="t4"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{runs / name / 'study.db'}")


def test_study_runs_end_to_end_locally(local_run):
    folder, runs, stdout = local_run
    assert "t4: reached 6 trials" in stdout and "hylo-search pareto t4" in stdout
    assert "trial    1 complete" in stdout and "front" in stdout
    study = _study(runs)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 6
    assert (runs / "t4" / "trials.parquet").is_file() and (runs / "t4" / "manifest.json").is_file()


def test_pareto_json_is_the_feasible_non_dominated_set(local_run):
    folder, runs, _ = local_run
    out = hylo(["pareto", "t4", "--format", "json"], folder, runs)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    study = _study(runs)
    assert [row["trial"] for row in report["front"]] == brute_force_front(study.trials, ["minimize", "minimize"])
    assert {b["baseline"] for b in report["baselines"]} >= {"teacher"}
    assert any(b["standing"] == "infeasible" for b in report["baselines"])
    table = hylo(["pareto", "t4"], folder, runs)
    assert table.returncode == 0 and "Pareto front of t4" in table.stdout and "baselines:" in table.stdout
    csv = hylo(["pareto", "t4", "--format", "csv", "--plot", str(folder / "front.html")], folder, runs)
    assert csv.stdout.splitlines()[0] == "trial,layout,baseline,proxy_kl,cache_bytes,cache_ratio,params_ratio"
    if importlib.util.find_spec("plotly") is None:
        assert csv.returncode == 1 and "needs plotly" in csv.stderr
    else:
        assert csv.returncode == 0 and (folder / "front.html").is_file()


def test_show_list_and_dashboard(local_run):
    folder, runs, _ = local_run
    front = json.loads(hylo(["pareto", "t4", "--format", "json"], folder, runs).stdout)["front"]
    shown = hylo(["show", "t4", str(front[0]["trial"])], folder, runs)
    assert shown.returncode == 0, shown.stderr
    assert f"layout  {front[0]['layout']}" in shown.stdout and "objective proxy_kl" in shown.stdout
    assert "teacher_agreement" in shown.stdout and "timings:" in shown.stdout
    missing = hylo(["show", "t4", "999"], folder, runs)
    assert missing.returncode == 2 and "has no trial 999" in missing.stderr
    listed = hylo(["list"], folder, runs)
    assert listed.returncode == 0 and "t4" in listed.stdout and "idle" in listed.stdout
    dashboard = hylo(["dashboard", "t4", "--port", "0"], folder, runs, timeout=20) \
        if importlib.util.find_spec("optuna_dashboard") is None else hylo(["dashboard", "--help"], folder, runs)
    if importlib.util.find_spec("optuna_dashboard") is None:
        assert dashboard.returncode == 1 and "optuna-dashboard is not installed" in dashboard.stderr
    else:
        assert dashboard.returncode == 0


def test_export_round_trips_into_upcycle(local_run, tmp_path):
    folder, runs, _ = local_run
    front = json.loads(hylo(["pareto", "t4", "--format", "json"], folder, runs).stdout)["front"]
    trial = front[-1]["trial"]
    target = tmp_path / "layout.yaml"
    out = hylo(["export", "t4", "--trial", str(trial), "--out", str(target)], folder, runs)
    assert out.returncode == 0, out.stderr
    layout = read_layout(target)
    assert str(layout) == front[-1]["layout"]
    import yaml

    data = yaml.safe_load(target.read_text())
    assert data["trial"] == trial and data["study"] == "t4" and set(data["objectives"]) == {"proxy_kl", "cache_bytes"}
    assert data["teacher"] == "builtin:tiny-random"  # as the study names it: nothing of this machine's paths
    from hylo_search.define.teachers import teacher_directory

    student = upcycle(str(teacher_directory(data["teacher"])), layout, **data["upcycle"])
    assert student.config.hylo_layout == str(layout)
    assert torch.isfinite(student(torch.tensor([[1, 2, 3, 4]]), use_cache=False).logits).all()
    infeasible = [t.number for t in _study(runs).trials if t.state == TrialState.PRUNED][0]
    with pytest.raises(UsageError, match=f"trial {infeasible} of 't4' is infeasible .* export a completed trial"):
        export_layout(str(runs / "t4"), infeasible)


@pytest.mark.parametrize("case", ["malformed", "unknown_mixer", "impossible", "unknown_name", "bad_trials"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case):
    runs = tmp_path / "runs"
    if case == "malformed":
        (tmp_path / "bad.yaml").write_text("name: bad\nteacher: [unclosed\n")
        args, expect = ["study", "bad.yaml"], "bad.yaml: malformed YAML (line "
    elif case == "unknown_mixer":
        write_study(tmp_path, name="bad", space={"mixers": ["attention", "mamba3"]})
        args, expect = ["study", "bad.yaml"], "field 'mixers': unknown mixer 'mamba3'; allowed: attention, mla, mamba2"
    elif case == "impossible":
        write_study(tmp_path, name="bad", space={"budgets": ["cache_bytes@512 <= 0.5%"]})
        args, expect = ["study", "bad.yaml"], "field 'budgets.0': impossible constraint"
    elif case == "unknown_name":
        args, expect = ["study", "no_such_study"], "unknown study 'no_such_study'; shipped: "
    else:
        write_study(tmp_path, name="bad")
        args, expect = ["study", "bad.yaml", "--trials", "0"], "--trials must be >= 1"
    before = sorted(p.name for p in tmp_path.iterdir())
    result = hylo(args, tmp_path, runs)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hylo-search study: error: ") and expect in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not runs.exists()


def test_dry_run_describes_and_writes_nothing(tmp_path):
    write_study(tmp_path)
    runs = tmp_path / "runs"
    result = hylo(["study", "t4.yaml", "--dry-run"], tmp_path, runs)
    assert result.returncode == 0, result.stderr
    for text in ("space size: 81 layouts", "feasible fraction", "(exact,", "teacher cache at 512 tokens",
                 "budget cache_bytes@512 <= 0.6x teacher", "baselines enqueued first", "uniform_interleave_gdn",
                 "per-trial cost estimate", "nothing was run or written"):
        assert text in result.stdout, text
    assert not runs.exists()


def test_kill_9_then_rerun_keeps_completed_trials_and_reaches_the_count(tmp_path):
    # The shared kill -9 test (also run on the journal and PostgreSQL storages), here on the study folder's SQLite.
    kill_9_mid_trial_then_resume(tmp_path, f"sqlite:///{tmp_path / 'runs' / NAME / 'study.db'}")
