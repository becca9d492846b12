"""`hylo-search probe` and `hylo-search eval` on a saved tiny HyLo model, through a subprocess where it matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from hylo_search.cli import main
from tests.helpers import tiny_model
from tests.probes.helpers import probe_tokenizer


def hylo_search(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "hylo_search.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tok = probe_tokenizer()
    model = tiny_model("A,G", vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("models") / "tiny-hylo"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_probe_subprocess_writes_table_json_parquet(model_dir, tmp_path):
    out = tmp_path / "out"
    run = hylo_search("probe", str(model_dir), "--tasks", "niah_single_1,vt", "--lengths", "1k", "--samples", "2",
                      "--out", str(out), "--device", "cpu")
    assert run.returncode == 0, run.stderr
    assert "niah_single_1" in run.stdout and "vt" in run.stdout and "1k" in run.stdout
    data = json.loads((out / "probe_fast.json").read_text())
    assert data["config"]["tasks"] == ["niah_single_1", "vt"] and len(data["records"]) == 4
    assert set(data["summary"]["score"]) == {"niah_single_1", "vt"}
    assert (out / "probe_fast.parquet").stat().st_size > 0


def test_probe_bad_input_exit_2_names_the_field(model_dir):
    run = hylo_search("probe", str(model_dir), "--tasks", "niah_single_9")
    assert run.returncode == 2
    assert "--tasks" in run.stderr and "allowed:" in run.stderr and "niah_single_1" in run.stderr
    run = hylo_search("probe", str(model_dir), "--lengths", "4q")
    assert run.returncode == 2 and "4k" in run.stderr


def test_probe_generate_with_saved_samples_and_reload(model_dir, tmp_path, capsys):
    samples = tmp_path / "samples"
    assert main(["probe", str(model_dir), "--tasks", "niah_single_1", "--lengths", "512", "--samples", "2",
                 "--scorer", "generate", "--save-samples", str(samples), "--out", str(tmp_path / "a"),
                 "--device", "cpu"]) == 0
    assert (samples / "niah_single_1" / "512.jsonl").is_file()
    assert main(["probe", str(model_dir), "--from-jsonl", str(samples), "--scorer", "generate",
                 "--out", str(tmp_path / "b"), "--device", "cpu"]) == 0
    first = json.loads((tmp_path / "a" / "probe_generate.json").read_text())["records"]
    again = json.loads((tmp_path / "b" / "probe_generate.json").read_text())["records"]
    assert [r["prediction"] for r in first] == [r["prediction"] for r in again]
    assert main(["probe", str(tmp_path / "no-such-model"), "--lengths", "512", "--samples", "1"]) == 2
    assert "MODEL_DIR" in capsys.readouterr().err


def test_probe_works_for_a_plain_transformers_teacher(tmp_path):
    from tests.helpers import tiny_teacher

    tok = probe_tokenizer()
    path = tmp_path / "teacher"
    tiny_teacher("llama", vocab_size=len(tok), max_position_embeddings=4096).save_pretrained(path)
    tok.save_pretrained(path)
    assert main(["probe", str(path), "--tasks", "niah_single_1", "--lengths", "512", "--samples", "1",
                 "--scorer", "generate", "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    (record,) = json.loads((tmp_path / "out" / "probe_generate.json").read_text())["records"]
    assert record["score"] == 0.0 and record["tokens"] <= 512


def test_eval_short_suite_says_which_datasets_are_missing(model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    assert main(["eval", str(model_dir), "--suite", "short", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert "missing (9 of 9" in out and "nothing to evaluate" in out
    for task in ("piqa", "arc_easy", "arc_challenge", "hellaswag", "winogrande", "openbookqa", "boolq",
                 "lambada_openai", "gsm8k"):
        assert f"  {task}: " in out
    assert "Couldn't reach" in out  # lm-eval's own words for a dataset that is not in the cache


def test_eval_long_suite_runs_probe_tasks_per_length(model_dir, tmp_path, capsys):
    out_file = tmp_path / "long.json"
    assert main(["eval", str(model_dir), "--suite", "long", "--probe-tasks", "niah_single_1", "--lengths",
                 "512,640", "--samples", "1", "--device", "cpu", "--out", str(out_file)]) == 0
    results = json.loads(out_file.read_text())["results"]["hylo_niah_single_1"]
    assert {"score,none", "512,none", "640,none"} <= set(results)
    assert "hylo_niah_single_1" in capsys.readouterr().out
