"""lm-eval, offline, on a tiny HyLo model: the command line (lm-eval's own CLI with HyLo registered) and the Python
API (``HFLM(pretrained=model, tokenizer=tok)`` + ``simple_evaluate``), on a tiny local multiple-choice task (its
accuracy against our own forward passes) and on the shipped probe tasks with per-length metrics: a random model
scores 0, the shipped tiny teacher, which recalls, scores high."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

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
    assert results["tiny_local_mc"]["acc,none"] == _accuracy_by_hand(model, tok, root / "mc.jsonl")
    assert results["hylo_niah_single_1"]["512,none"] == 0.0
    assert out["n-samples"]["tiny_local_mc"]["effective"] == 4


@torch.no_grad()
def _accuracy_by_hand(model, tok, data):
    """The multiple-choice accuracy from our own forward passes: each choice's log-likelihood after the prompt
    (lm-eval's split: the whole text encoded, the prompt's tokens cut off), the best choice against the label."""
    right = []
    for row in map(json.loads, data.read_text().splitlines()):
        prompt = f"Question: {row['question']}\nAnswer:"
        scores = []
        for choice in row["choices"]:
            whole, head = tok.encode(f"{prompt} {choice}"), len(tok.encode(prompt))
            logp = model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
            scores.append(sum(logp[i - 1, whole[i]].item() for i in range(head, len(whole))))
        right.append(max(range(len(scores)), key=scores.__getitem__) == row["label"])
    return sum(right) / len(right)


def test_a_model_that_recalls_scores_high_through_lm_eval():
    """The shipped tiny teacher recalls most 7-digit needles at 512 tokens (chance is about 1e-7). Through lm-eval
    and the probe task folder, each sample's score is what a plain substring check of its generation gives, and
    the task's score at that length is their mean. Measured: 17 of 20 (0.85), the same as the generate scorer of
    :mod:`hylo_search.probes` gives on these samples."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hylo_search.define.teachers import teacher_directory
    from hylo_search.probes.evaluation import task_manager

    directory = teacher_directory("builtin:tiny", cache_dir=None)
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1, max_length=1024, device="cpu")
    manager = task_manager({"tokenizer": tok, "max_seq_lengths": [512], "num_samples": 20, "seed": 0})
    out = simple_evaluate(model=lm, tasks=["hylo_niah_single_1"], task_manager=manager,
                          gen_kwargs="max_gen_toks=8", bootstrap_iters=0, log_samples=True)
    found = []
    for sample in out["samples"]["hylo_niah_single_1"]:
        generated = sample["resps"][0][0]
        found.append(float(all(ref in generated for ref in sample["doc"]["outputs"])))
        assert sample["score"] == sample["512"] == found[-1], (generated, sample["doc"]["outputs"])
    assert len(found) == 20
    score = out["results"]["hylo_niah_single_1"]["512,none"]
    print(f"\nhylo_niah_single_1 at 512 tokens through lm-eval: {sum(found):.0f} of {len(found)}")
    assert score == pytest.approx(sum(found) / len(found)) and score >= 0.6


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
