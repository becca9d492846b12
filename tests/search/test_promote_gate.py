"""The promotion gate: a promoted model is probed on fresh prompts and held to its trial's promise.

End to end on the embedded tiny teacher (layout A,A, needles at 320 tokens, where it recalls 0.8-0.9): a recipe
whose long stage compresses RoPE x4 destroys recall, and ``promote --gate fail`` exits 1 with both figures printed
and recorded; one that keeps RoPE passes. The promise is the teacher's own single-run probe score at the search's
seed, as `export` would write it. The arithmetic of the gate and of the promise is checked exactly below.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import yaml

from hylo_search.errors import UsageError
from hylo_search.results.gate import CHUNKS, Figure, compare, judged_metrics, read_spec, verdict
from hylo_search.results.trial import promise_of

from .helpers import REPO, hylo

TEACHER = REPO / "hylo_search" / "assets" / "tiny_teacher"
CORPUS = REPO / "studies" / "recipes" / "data" / "tiny.txt"
LENGTH = 320
PROBES = {"kind": "ruler", "tasks": ["niah_single_1"], "lengths": [LENGTH], "scorer": "fast"}


def _recipe(folder: Path, rope: dict | None) -> Path:
    """One long stage of one step on the tiny corpus, training nothing that matters (attention at lr 1e-7):
    what it does to recall is what its RoPE does."""
    stage = {"kind": "long", "steps": 1, "seq_len": 32, "batch_size": 2, "lr": {"attention": 1.0e-7}}
    if rope:
        stage["rope"] = rope
    recipe = {"name": "gate_test", "data": {"sources": [{"path": str(CORPUS)}], "eval_fraction": 0.1},
              "eval": {"sequences": 2}, "stages": [stage]}
    path = folder / f"recipe_{'rope' if rope else 'plain'}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def layout_file(tmp_path_factory) -> Path:
    """A layout file as `export` writes it for the teacher's own layout, its promise measured like a search trial
    (10 samples, seed 0)."""
    import torch
    from transformers import AutoTokenizer

    from hylo_model import upcycle
    from hylo_model.train.trainer import load_teacher
    from hylo_search.probes import run_probes

    teacher, _ = load_teacher(str(TEACHER), torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(TEACHER)
    score = run_probes(upcycle(teacher, "A,A").eval(), tokenizer, PROBES["tasks"], [LENGTH], samples=10,
                       seed=0).mean()
    entry = {"mean": score, "se": math.sqrt(score * (1 - score) / 10), "n": 10, "seeds": [0]}
    path = tmp_path_factory.mktemp("gate") / "layout.yaml"
    path.write_text(yaml.safe_dump({
        "layout": {"code": "A,A"}, "teacher": str(TEACHER), "study": "gate_test", "trial": 0,
        "probes": PROBES, "promotion": {"gate": "warn", "gate_seed": 1_000_003, "gate_samples": 16},
        "promise": {f"probe_accuracy@{LENGTH}": entry, "probe_accuracy": entry}}))
    assert score >= 0.6, score  # the teacher recalls at this length, so a fall to 0 is a real shortfall
    return path


def test_gate_fails_a_recipe_that_destroys_recall(layout_file, tmp_path):
    out = tmp_path / "run"
    done = hylo(["promote", "--layout-file", str(layout_file), "--recipe", str(_recipe(tmp_path, {
        "rope_type": "linear", "factor": 4.0})), "--out", str(out), "--gate", "fail", "--progress", "off",
        "--log-with", "none"], tmp_path, tmp_path / "runs")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gate FAILED" in done.stdout and f"probe_accuracy@{LENGTH}" in done.stdout
    gate = json.loads((out / "run.json").read_text())["promotion_gate"]
    assert gate["verdict"] == "short" and gate["mode"] == "fail" and gate["samples"] == 16
    (check,) = gate["checks"]  # the bare metric repeats the per-length one and is not judged twice
    assert check["metric"] == f"probe_accuracy@{LENGTH}" and check["status"] == "short"
    assert check["promoted"]["mean"] < check["promise"]["mean"] - check["limit"]
    assert check["promoted"]["seeds"] == [1_000_003 + k for k in range(CHUNKS)]
    assert (out / "final" / "model.safetensors").exists()  # a failed gate keeps the trained model
    # The trainer said why: the RoPE change compresses positions the model was trained at.
    notes = json.loads((out / "result.json").read_text())["stages"][0]["notes"]
    assert any("changes the rotary angles" in note for note in notes)


def test_gate_passes_a_recipe_that_keeps_recall(layout_file, tmp_path):
    out = tmp_path / "run"
    done = hylo(["promote", "--layout-file", str(layout_file), "--recipe", str(_recipe(tmp_path, None)),
                 "--out", str(out), "--gate", "fail", "--progress", "off", "--log-with", "none"],
                tmp_path, tmp_path / "runs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gate passed" in done.stdout
    assert json.loads((out / "run.json").read_text())["promotion_gate"]["verdict"] == "passed"


def _fig(mean, se, n=64, seeds=(0,)):
    return Figure(mean, se, n, list(seeds))


def test_compare_judges_each_length_within_two_combined_standard_errors():
    promise = {"probe_accuracy@512": _fig(0.5, 0.1), "probe_accuracy@1024": _fig(0.5, 0.1),
               "probe_accuracy": _fig(0.5, 0.1), "probe_logprob@1024": _fig(-1.0, None)}
    got = {"probe_accuracy@512": _fig(0.3, 0.05), "probe_accuracy@1024": _fig(0.2, 0.05),
           "probe_accuracy": _fig(0.2, 0.05), "probe_logprob@1024": _fig(-1.5, 0.2)}
    assert judged_metrics(promise) == ["probe_accuracy@512", "probe_accuracy@1024", "probe_logprob@1024"]
    checks = {c.metric: c for c in compare(promise, got)}
    limit = 2 * math.sqrt(0.1 ** 2 + 0.05 ** 2)  # 0.2236
    assert checks["probe_accuracy@512"].limit == pytest.approx(limit)
    assert checks["probe_accuracy@512"].status == "ok"  # 0.2 short, within 0.2236
    assert checks["probe_accuracy@1024"].status == "short"  # 0.3 short
    logprob = checks["probe_logprob@1024"]  # no SE in the promise: the gate's own (0.2) sets the limit, said so
    assert logprob.limit == pytest.approx(0.4) and logprob.status == "short" and "no standard error" in logprob.note
    assert verdict(list(checks.values())) == "short"
    both_unknown = compare({"probe_x@8": _fig(1.0, None)}, {"probe_x@8": _fig(0.0, None)})
    assert [c.status for c in both_unknown] == ["unjudged"] and verdict(both_unknown) == "unjudged"


def test_read_spec_refuses_gate_seeds_the_search_used(tmp_path):
    entry = {"mean": 0.5, "se": 0.1, "n": 10, "seeds": [1_000_004]}
    data = {"probes": PROBES, "promise": {"probe_accuracy@320": entry}, "promotion": {"gate_seed": 1_000_003}}
    with pytest.raises(UsageError, match="promotion.gate_seed.*which the search probed with"):
        read_spec(data, "layout.yaml")
    data["promotion"]["gate_seed"] = 7
    spec = read_spec(data, "layout.yaml", gate="fail")
    assert spec.settings.gate == "fail" and spec.promise["probe_accuracy@320"].se == 0.1
    assert read_spec({"layout": {"code": "A,A"}}, "layout.yaml") is None  # no promise: no gate
    with pytest.raises(UsageError, match="field 'promise.probe_accuracy@320'"):
        read_spec({**data, "promise": {"probe_accuracy@320": {"se": 0.1}}}, "layout.yaml")


def _trial(number_attrs: dict) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(values=[0.0], user_attrs=number_attrs)


def test_promise_of_a_single_run_and_of_replicates():
    study = optuna.create_study()
    single = _trial({"layout": "A,L32", "run": {"seed": 0},
                     "metrics": {"proxy_kl": 0.08, "probe_accuracy@1024": 0.5, "probe_logprob@1024": -2.0}})
    study.add_trial(single)
    handle = SimpleNamespace(study=study)
    probes = {"tasks": ["niah_single_1", "vt"], "samples": 10}
    source, promise = promise_of(handle, study.trials[0], probes)
    assert source == 0 and set(promise) == {"probe_accuracy@1024", "probe_logprob@1024"}
    assert promise["probe_accuracy@1024"] == {"mean": 0.5, "se": math.sqrt(0.25 / 20), "n": 20, "seeds": [0]}
    assert promise["probe_logprob@1024"]["se"] is None  # not bounded: no binomial SE
    # A replicated trial of the same layout gives the promise its seeds' spread.
    study.add_trial(_trial({"layout": "A,L32", "tier": "replicated", "replicate_of": 0, "replicates": {
        "seeds": [0, 1, 2], "probe_samples": 64,
        "metrics": {"probe_accuracy@1024": {"mean": 0.45, "se": 0.03, "values": [0.4, 0.45, 0.5]},
                    "proxy_kl": {"mean": 0.09, "se": 0.01, "values": [0.08, 0.09, 0.1]}}}}))
    source, promise = promise_of(handle, study.trials[0], probes)
    assert source == 1 and promise == {"probe_accuracy@1024": {"mean": 0.45, "se": 0.03, "n": 128,
                                                               "seeds": [0, 1, 2]}}
