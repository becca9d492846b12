"""``hylo-search train`` / ``promote``: killed with SIGKILL and rerun it ends bit-exactly where an uninterrupted run
does; bad input exits 2 with one line naming the file and field, and writes nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from hylo_search.cli import main
from tests.train.conftest import CORPUS, LAYOUT, REPO, final_weights, same_weights


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hylo_search.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_killed_training_resumes_to_the_same_weights(golden_run, teacher_dir, tmp_path):
    """SIGKILL as soon as the first mid-stage checkpoint of the distill stage exists (whatever is being written at
    that moment), then the same command again: the final weights equal the uninterrupted run's bit for bit."""
    golden_dir, _ = golden_run
    out = tmp_path / "run"
    command = _cli("train", "--teacher", str(teacher_dir), "--layout", LAYOUT, "--recipe", "tiny", "--out", str(out),
                   "--progress", "lines")
    process = subprocess.Popen(command, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not list((out / "checkpoints").glob("01-distill/step-0000005")):
        assert process.poll() is None, process.stdout.read().decode()
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "final").exists(), "the run finished before it could be killed"
    rerun = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from" in rerun.stderr and "01-distill" in rerun.stderr
    assert same_weights(final_weights(out), final_weights(golden_dir))
    assert "held-out KL" in rerun.stdout and "final model:" in rerun.stdout


def test_bad_recipe_exits_2_with_one_line_and_writes_nothing(teacher_dir, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("stages:\n  - {kind: distil, steps: 3, seq_len: 16, batch_size: 4, lr: 1.0e-3}\n")
    out = tmp_path / "out"
    result = subprocess.run(_cli("train", "--teacher", str(teacher_dir), "--layout", LAYOUT, "--recipe", str(recipe),
                                 "--out", str(out)), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(recipe) in lines[0]
    assert "field 'stages[0].kind': unknown stage kind 'distil'; allowed: align, distill, long" in lines[0]
    assert not out.exists()


def _tiny_recipe_file(tmp_path, **stage_changes) -> str:
    recipe = yaml.safe_load((REPO / "studies" / "recipes" / "proxy_tiny.yaml").read_text())
    recipe["data"]["sources"][0]["path"] = str(CORPUS)
    for key, value in stage_changes.items():
        recipe["stages"][1][key] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


@pytest.mark.parametrize("case", ["layout", "teacher", "data", "batch", "rope"])
def test_bad_inputs_exit_2_and_write_nothing(case, teacher_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = {"teacher": str(teacher_dir), "layout": LAYOUT, "recipe": "proxy_tiny", "extra": []}
    expected = {
        "layout": r"--layout: layout 'A,L16,M' has 3 layers but the model has 4",
        "teacher": r"--teacher .*missing-teacher: .*no such directory",
        "data": r"--data .*nowhere\.txt: '.*nowhere\.txt' does not exist",
        "batch": r"field 'stages\[1\]': micro_batch_size 3 must divide batch_size 4",
        "rope": r"field 'stages\[1\]\.rope': rope parameters .* are not usable",
    }[case]
    if case == "layout":
        args["layout"] = "A,L16,M"
    elif case == "teacher":
        args["teacher"] = str(tmp_path / "missing-teacher")
    elif case == "data":
        args["extra"] = ["--data", str(tmp_path / "nowhere.txt")]
    elif case == "batch":
        args["recipe"] = _tiny_recipe_file(tmp_path, batch_size=4, micro_batch_size=3)
    else:
        args["recipe"] = _tiny_recipe_file(tmp_path, kind="long", rope={"rope_type": "yarn"})
    code = main(["train", "--teacher", args["teacher"], "--layout", args["layout"], "--recipe", args["recipe"],
                 "--out", str(out), "--progress", "off", *args["extra"]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(expected, err), err
    assert not out.exists()


def test_promote_a_layout_file(teacher_dir, tmp_path, capsys):
    layout_file = tmp_path / "trial_00007.yaml"
    layout_file.write_text(yaml.safe_dump({
        "layout": {"code": "A,L,M,G"}, "teacher": str(teacher_dir), "study": "tiny", "trial": 7,
        "upcycle": {"kv_lora_rank": 8, "qk_rope_head_dim": 8},  # the trial's own options win over the recipe's
    }))
    out = tmp_path / "promoted"
    code = main(["promote", "--layout-file", str(layout_file), "--recipe", "proxy_tiny", "--out", str(out),
                 "--progress", "off"])
    assert code == 0, capsys.readouterr().err
    run = json.loads((out / "run.json").read_text())
    assert run["layout"] == "A,L,M,G" and run["metadata"]["layout_file"] == str(layout_file.resolve())
    config = json.loads((out / "final" / "config.json").read_text())
    assert config["kv_lora_rank"] == 8 and config["hylo_layout"] == "A,L,M,G"
    assert "held-out KL" in capsys.readouterr().out


def test_promote_argument_errors(teacher_dir, tmp_path, capsys, monkeypatch):
    no_teacher = tmp_path / "layout.yaml"
    no_teacher.write_text(yaml.safe_dump({"layout": {"code": LAYOUT}}))
    cases = [
        (["promote", "tiny", "--trial", "1", "--layout-file", str(no_teacher)], "not both"),
        (["promote"], "give STUDY --trial N, or --layout-file FILE"),
        (["promote", "--layout-file", str(no_teacher)], "no 'teacher' field; pass --teacher"),
        (["promote", "--layout-file", str(tmp_path / "nope.yaml")], "no such file"),
    ]
    for argv, message in cases:
        assert main([*argv, "--recipe", "proxy_tiny", "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
