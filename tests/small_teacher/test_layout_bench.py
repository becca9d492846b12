"""benchmarks/layout_bench/extend.py end to end on the embedded tiny teacher with a toy recipe and two layouts: one
row per layout, a crashed run resumes where it stopped, and a rerun appends nothing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def extend():
    spec = importlib.util.spec_from_file_location("layout_bench_extend", ROOT / "benchmarks/layout_bench/extend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs(tmp_path):
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from hylo_search.define.teachers import teacher_directory

    text = (ROOT / "studies/recipes/data/tiny.txt").read_text()
    ids = AutoTokenizer.from_pretrained(teacher_directory("builtin:tiny"))(text)["input_ids"]
    heldout = tmp_path / "heldout.safetensors"
    save_file({"input_ids": torch.tensor(ids[:4 * 64], dtype=torch.int32).reshape(4, 64)}, str(heldout))
    recipe = yaml.safe_load((ROOT / "studies/recipes/promote_tiny.yaml").read_text())
    recipe["data"]["sources"] = [{"path": str(ROOT / "studies/recipes/data/tiny.txt")}]
    for stage, steps in zip(recipe["stages"], (2, 2, 1)):
        stage.update(steps=steps, seq_len=min(stage["seq_len"], 64), warmup_steps=0)
    recipe["runtime"] = {"checkpoint_every": 1, "log_every": 1}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(recipe))
    return ["--study", "tiny", "--source", "front", "--layout", "A,G", "--layout", "M,A", "--seeds", "0",
            "--recipe", str(tmp_path / "toy.yaml"), "--data", str(ROOT / "studies/recipes/data/tiny.txt"),
            "--heldout", str(heldout), "--probe-samples", "2", "--table", str(tmp_path / "table.parquet"),
            "--runs", str(tmp_path / "runs")]


def test_extend_appends_resumes_and_skips(extend, tmp_path, monkeypatch):
    args = _inputs(tmp_path)
    table = tmp_path / "table.parquet"
    promoted, judge = [], extend.judge

    def counting_promote(layout, seed, *rest, real=extend.promote):
        promoted.append(layout)
        return real(layout, seed, *rest)

    def crash_on_second(*a, **k):
        if len(promoted) == 2:
            raise KeyboardInterrupt  # killed while judging the second layout
        return judge(*a, **k)

    monkeypatch.setattr(extend, "promote", counting_promote)
    monkeypatch.setattr(extend, "judge", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        extend.main(args)
    assert [r["layout"] for r in extend.read_table(table)] == ["A,G"]
    assert (tmp_path / "runs" / "M_A-s0" / "run" / "final").is_dir()  # trained before the kill

    monkeypatch.setattr(extend, "judge", judge)
    promoted.clear()
    assert extend.main(args) == 0
    assert promoted == ["M,A"]  # the first layout is not trained again
    rows = extend.read_table(table)
    assert [(r["layout"], r["source"], r["seed"]) for r in rows] == [("A,G", "front", 0), ("M,A", "front", 0)]
    for row in rows:
        assert row["heldout_perplexity"] > 1 and row["tokens"] > 0 and row["card"] == "cpu"
        assert 0 <= row["probe_accuracy@1024"] <= 1 and row["probe_samples"] == 2

    before = table.read_bytes()
    promoted.clear()
    assert extend.main(args) == 0
    assert promoted == [] and table.read_bytes() == before


def test_stratified_sample_covers_attention_counts(extend):
    from hylo_search.study import load_study

    space = load_study("small").space
    layouts = extend.stratified_layouts(space, per_stratum=2, seed=0)
    counts = [sum(t == "A" or t.startswith("L") for t in tokens) for tokens in layouts]
    assert counts == sorted(counts) and len(set(counts)) >= 5
    assert all(space.is_feasible(tokens) for tokens in layouts)
    assert layouts == extend.stratified_layouts(space, per_stratum=2, seed=0)
