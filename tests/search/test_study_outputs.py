"""What a user sees of a study beyond its table: the console lines (baseline tags and bracketed failure text kept,
an ETA), the library's progress lines, the plots of the front (PNG projections, a self-contained HTML well under
plotly's full bundle, a CDN variant), the heat map's colour scale, experiment tracking into a local MLflow store
through the driver's hook, and the smaller CLI promises (``upcycle builtin:tiny``; a one-line error for a missing
Ray)."""

from __future__ import annotations

import io
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState, create_trial
from rich.console import Console

from hylo_search.commands._progress import LibraryLines
from hylo_search.commands.study import _Progress
from hylo_search.errors import UsageError

from .helpers import cli_env, hylo, write_study

THREE = [{"metric": "proxy_kl", "direction": "minimize"}, {"metric": "probe_accuracy", "direction": "maximize"},
         {"metric": "cache_bytes", "direction": "minimize"}]


def _printed(progress: _Progress) -> str:
    return progress.console.file.getvalue()


def _console() -> Console:
    return Console(file=io.StringIO(), width=400, force_terminal=False, highlight=False, soft_wrap=True)


def test_trial_lines_keep_baseline_tags_and_bracketed_failures():
    progress = _Progress(3, ["proxy_kl", "cache_bytes"])
    progress.console = _console()
    counts = {"complete": 0, "failed": 0, "infeasible": 0, "running": 0, "front": 0, "counted": 0}
    progress.report("started", {"folder": "/tmp/[x]", "storage": "sqlite:///s.db", "capacity": 1, "counts": counts})
    teacher = create_trial(values=[0.0, 4096.0], user_attrs={"layout": "A,A", "baseline": "teacher"})
    teacher.number = 0
    failed = create_trial(state=TrialState.FAIL, user_attrs={
        "layout": "G,G", "baseline": "all_gdn", "failure": "oom: CUDA out of memory [tried 2 GiB] [bold]x[/bold]"})
    failed.number = 1
    progress.report("trial", {"trial": teacher, "counts": {**counts, "complete": 1, "counted": 1, "front": 1}})
    progress.report("trial", {"trial": failed, "counts": {**counts, "complete": 1, "failed": 1, "counted": 2,
                                                          "front": 1}})
    out = _printed(progress)
    assert "study folder /tmp/[x] (storage sqlite:///s.db)" in out
    assert "trial    0 complete   A,A  proxy_kl=0  cache_bytes=4096  [baseline teacher]" in out
    assert "(oom: CUDA out of memory [tried 2 GiB] [bold]x[/bold])  [baseline all_gdn]" in out
    assert "eta " in out.splitlines()[-1]  # two of three trials done: one left, at this run's pace


def test_replicate_lines_have_an_eta_for_the_finalists_left():
    """The replicate phase (most of the tiny demo's time) shows the time left for the finalists known so far."""
    progress = _Progress(1, ["proxy_kl"])
    progress.console = _console()
    counts = {"complete": 1, "failed": 0, "infeasible": 0, "running": 0, "front": 1, "counted": 1, "replicated": 0}
    progress.report("started", {"folder": "f", "storage": "s", "capacity": 1, "counts": counts})
    searched = create_trial(values=[0.5], user_attrs={"layout": "A,G"})
    searched.number = 0
    progress.report("trial", {"trial": searched, "counts": {**counts, "finalists_left": 2}})
    lines = []
    for number, left in ((1, 1), (2, 0)):
        rep = create_trial(values=[0.5], user_attrs={"layout": "A,G", "replicate_of": 0,
                                                     "replicates": {"seeds": [0, 1, 2]}})
        rep.number = number
        progress.report("trial", {"trial": rep, "counts": {**counts, "counted": 1 + number, "replicated": number,
                                                           "finalists_left": left}})
        lines.append(_printed(progress).splitlines()[-1])
    assert "[replicate over 3 seeds of trial 0]" in lines[0] and "eta " in lines[0]  # one of two done
    assert "eta" not in lines[1]  # none left


def test_library_lines_count_tasks_with_an_eta():
    lines = LibraryLines(_console(), "library of t4")
    lines.report("library_started", {"entries": 4, "tasks": 2})
    lines.report("library_task", {"token": "G", "layers": [0, 1], "trained": [0, 1], "seconds": 1.25})
    lines.report("library_task", {"token": "L8", "layers": [0, 1], "trained": [], "seconds": 0.5})
    assert not lines.report("trial", {})
    out = lines.console.file.getvalue().splitlines()
    assert out[0] == "library of t4: 4 blocks in 2 tasks"
    assert out[1].startswith("  [1/2] G      layers [0, 1]: trained 2 in 1.2 s   | eta ")
    assert out[2] == "  [2/2] L8     layers [0, 1]: trained 0 in 0.5 s"


@pytest.fixture(scope="module")
def tracked_study(tmp_path_factory):
    """A 3-objective study run through the CLI with ``--track mlflow`` into a local SQLite MLflow store."""
    folder = tmp_path_factory.mktemp("outputs")
    runs = folder / "runs"
    write_study(folder, objectives=THREE, trials=4)
    store = f"sqlite:///{folder / 'mlflow.db'}"
    done = subprocess.run([sys.executable, "-m", "hylo_search.cli", "study", "t4.yaml", "--track", "mlflow"],
                          cwd=folder, env={**cli_env(runs), "MLFLOW_TRACKING_URI": store}, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, runs, done.stdout, store


def test_study_console_shows_baselines_and_an_eta(tracked_study):
    _, _, stdout, _ = tracked_study
    lines = [line for line in stdout.splitlines() if line.startswith("trial ")]
    assert any("[baseline " in line for line in lines), stdout
    assert any(" eta " in line for line in lines), stdout


def test_plots_of_a_three_objective_front(tracked_study):
    folder, runs, stdout, _ = tracked_study
    study_dir = runs / "t4"
    png, html = study_dir / "front.png", study_dir / "front.html"
    assert f"plot: {png}  {html}" in stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = html.read_text()
    # Self-contained: the figure and plotly.js (gzip + base64) in the file, nothing fetched; far below 4.9 MB.
    assert html.stat().st_size < 2_500_000 and "DecompressionStream" in page and "cdn.plot.ly" not in page
    assert '"text":"proxy_kl"' in page and '"name":"baselines' in page
    cdn = folder / "front_cdn.html"
    out = hylo(["pareto", "t4", "--plot", str(cdn), "--plot-cdn"], folder, runs)
    assert out.returncode == 0, out.stderr
    assert cdn.stat().st_size < 200_000 and "https://cdn.plot.ly/plotly-" in cdn.read_text()
    bad = hylo(["pareto", "t4", "--plot", str(folder / "f.png"), "--plot-cdn"], folder, runs)
    assert bad.returncode == 2 and "--plot-cdn applies to --plot FILE.html only" in bad.stderr


def test_every_counted_trial_is_an_mlflow_run(tracked_study):
    import mlflow

    folder, runs, _, store = tracked_study
    study = optuna.load_study(study_name="t4", storage=f"sqlite:///{runs / 't4' / 'study.db'}")
    counted = {t.number: t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)}
    client = mlflow.MlflowClient(tracking_uri=store)
    logged = client.search_runs([client.get_experiment_by_name("t4").experiment_id])
    by_number = {int(run.data.tags["number"]): run for run in logged}
    assert set(by_number) == set(counted)
    for number, run in by_number.items():
        trial = counted[number]
        assert run.data.tags["layout"] == trial.user_attrs["layout"] and run.data.tags["study"] == "t4"
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        if trial.values:
            assert [run.data.metrics[m] for m in ("proxy_kl", "probe_accuracy", "cache_bytes")] == trial.values
            assert "time:proxy_s" in run.data.metrics and "cache_ratio" in run.data.metrics
        if "baseline" in trial.user_attrs:
            assert run.data.tags["baseline"] == trial.user_attrs["baseline"]


def test_a_failing_tracker_warns_once_and_the_study_goes_on(capsys):
    from hylo_search.search.tracking import Tracked

    def broken(study, trial):
        raise ConnectionError("tracking server down")

    tracked = Tracked("mlflow", broken)
    study = optuna.create_study(directions=["minimize"])
    for _ in range(2):
        tracked(study, create_trial(values=[1.0]))
    tracked(study, create_trial(state=TrialState.PRUNED))  # an infeasible proposal is not a run
    assert capsys.readouterr().err.count("--track mlflow failed on trial") == 1


def test_heat_map_colour_scale_starts_at_zero():
    from hylo_search.library.sensitivity import heat_map_figure

    rows = [{"layer": layer, "token": token, "kl": kl, "probe_drop": drop}
            for layer, token, kl, drop in [(0, "G", 4.5, 0.5), (0, "M", 2.0, 0.75), (1, "G", 0.5, -0.25),
                                           (1, "M", 1.0, 0.5)]]
    figure = heat_map_figure({"study": "s", "rows": rows}, ["kl", "probe_drop"])
    assert [axis.images[0].get_clim() for axis in figure.axes if axis.images] == [(0.0, 4.5), (0.0, 0.75)]


def test_upcycle_takes_a_builtin_teacher(tmp_path):
    out = hylo(["upcycle", "builtin:tiny", "--layout", "A,G", "--out", str(tmp_path / "up")], tmp_path, tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "saved A,G ->" in out.stdout and (tmp_path / "up" / "model.safetensors").is_file()


def test_ray_executor_without_ray_names_the_extra(monkeypatch):
    from hylo_search.executors.ray import _import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when Ray is not installed
    with pytest.raises(UsageError, match=r"--executor ray needs Ray.*pip install 'hylo-search\[ray\]'"):
        _import_ray(local=True)

