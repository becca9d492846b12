"""lm-eval, offline, on a tiny HyLo model: the command line (lm-eval's own CLI with HyLo registered) and the Python
API (``HFLM(pretrained=model, tokenizer=tok)`` + ``simple_evaluate``), on a tiny local multiple-choice task and on
the shipped probe tasks with per-length metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import tiny_model
from tests.probes.helpers import probe_tokenizer


MC_TASK = """task: tiny_local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = probe_tokenizer()
    model = tiny_model("A,G", vocab_size=len(tok), max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    root = tmp_path_factory.mktemp("lm_eval")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    data = root / "mc.jsonl"
    rows = [{"question": f"Is the grass green {i}?", "choices": ["yes", "no"], "label": i % 2} for i in range(4)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tasks").mkdir()
    (root / "tasks" / "tiny_local_mc.yaml").write_text(MC_TASK.format(path=data))
    return model, tok, root


def test_cli_path_loads_a_saved_hylo_directory(tiny, tmp_path):
    _, _, root = tiny
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run(
        [sys.executable, "-m", "hylo_search.probes.lm_eval_cli", "--model", "hf",
         "--model_args", f"pretrained={root / 'model'},max_length=1024", "--tasks", "hylo_niah_single_1",
         "--metadata", json.dumps({"max_seq_lengths": [512, 600], "num_samples": 1}), "--device", "cpu",
         "--batch_size", "1", "--gen_kwargs", "max_gen_toks=4", "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    (result_file,) = (tmp_path / "out").rglob("results_*.json")
    data = json.loads(result_file.read_text())
    results = data["results"]["hylo_niah_single_1"]
    assert results["score,none"] == 0.0 and {"512,none", "600,none"} <= set(results)
    assert str(root / "model") in json.dumps(data["config"]["model_args"])


def test_python_api_with_a_model_object(tiny):
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from hylo_search.probes.evaluation import TASK_DIR

    model, tok, root = tiny
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, max_length=1024, device="cpu")
    # A model object carries no tokenizer name for the probe tasks: hand the tokenizer over as metadata.
    manager = TaskManager(include_path=[str(TASK_DIR), str(root / "tasks")],
                          metadata={"tokenizer": tok, "max_seq_lengths": [512], "num_samples": 2})
    out = simple_evaluate(model=lm, tasks=["tiny_local_mc", "hylo_niah_single_1"], task_manager=manager,
                          gen_kwargs="max_gen_toks=4", bootstrap_iters=0)
    results = out["results"]
    assert 0.0 <= results["tiny_local_mc"]["acc,none"] <= 1.0
    assert results["hylo_niah_single_1"]["512,none"] == 0.0
    assert out["n-samples"]["tiny_local_mc"]["effective"] == 4


def test_probe_jsonl_runs_as_lm_eval_task(tiny, tmp_path):
    """Ready-made samples (our JSONL) are read instead of generated, via the probe_data option."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from hylo_search.probes import generate_sample, write_samples
    from hylo_search.probes.evaluation import task_manager

    model, tok, _ = tiny
    write_samples([generate_sample("vt", n, 0, tok) for n in (1024, 1100)], tmp_path / "samples")
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, max_length=1200, device="cpu")
    out = simple_evaluate(model=lm, tasks=["hylo_vt"], task_manager=task_manager({"probe_data": str(tmp_path)}),
                          gen_kwargs="max_gen_toks=2", bootstrap_iters=0)
    assert {"1024,none", "1100,none"} <= set(out["results"]["hylo_vt"])
