"""The small teacher's groundwork at toy scale: a reproducible corpus, deterministic skill batches, and training
that resumes to exactly the weights of an uninterrupted run."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from hylo_search.small_teacher.corpus import build_corpus, package_root, read_documents
from hylo_search.small_teacher.train import SIZES, prepare, train


def test_corpus_is_reproducible_and_split_by_package(tmp_path):
    first = build_corpus(tmp_path / "a", ["yaml", "click"], heldout=("click",))
    second = build_corpus(tmp_path / "b", ["yaml", "click"], heldout=("click",))
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()
    assert first == second
    for split in ("train", "heldout"):
        for shard in first["shards"][split]:
            data = (tmp_path / "a" / shard["file"]).read_bytes()
            assert data == (tmp_path / "b" / shard["file"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"]
    assert {d["package"] for d in read_documents(tmp_path / "a", "train")} == {"yaml"}
    assert {d["package"] for d in read_documents(tmp_path / "a", "heldout")} == {"click"}
    files = first["packages"]["yaml"]["files"]
    assert [f["path"] for f in files] == sorted(f["path"] for f in files)
    one = files[0]
    text = (package_root("yaml") / one["path"]).read_text()
    assert hashlib.sha256(text.encode()).hexdigest() == one["sha256"]
    with pytest.raises(ValueError, match="unknown corpus package 'nope'"):
        build_corpus(tmp_path / "c", ["nope"])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    work = tmp_path_factory.mktemp("small") / "work"
    prepare(work, SIZES["tiny-smoke"], ["alembic", "click"])
    return work


def _copy_inputs(source, target):
    target.mkdir(parents=True)
    for name in ("corpus", "tokenizer"):
        shutil.copytree(source / name, target / name)
    for name in ("tokens_train.npy", "heldout.safetensors"):
        shutil.copyfile(source / name, target / name)


def test_skill_batches_are_a_function_of_the_step(prepared):
    from hylo_search.small_teacher.skills import SkillMix, StepBatches
    from hylo_search.small_teacher.train import PAD, schedule

    tokenizer, tokens, _ = prepare(prepared, SIZES["tiny-smoke"])
    plan = schedule(SIZES["tiny-smoke"])
    one, two = (StepBatches(SkillMix(tokenizer, tokens, 0), plan, PAD) for _ in range(2))
    for step in (5, 0, 7):
        a, b = one[step], two[step]
        assert all((x == y).all() for key in a for x, y in zip(a[key], b[key]))
    assert one[6]["code"][0].shape[1] == 256 and one[0]["code"][0].shape[1] == 128  # the 16K stage is longer
    mix = SkillMix(tokenizer, tokens, 0)
    for kind in ("copy", "kv", "needle", "vt"):
        ids, labels = getattr(mix, kind)(mix.rng(0), 200)
        assert len(ids) == len(labels) and any(label != -100 for label in labels), kind


def test_resume_gives_the_uninterrupted_weights(prepared, tmp_path):
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    _copy_inputs(prepared, whole)
    _copy_inputs(prepared, halves)
    done = train(whole, "tiny-smoke", until=6, log=None)
    first = train(halves, "tiny-smoke", until=3, log=None)
    assert first["step"] == 3 and not first["done"]
    second = train(halves, "tiny-smoke", until=6, log=None)
    assert second["step"] == done["step"] == 6
    a = (whole / "checkpoints" / "step-000006" / "model.safetensors").read_bytes()
    b = (halves / "checkpoints" / "step-000006" / "model.safetensors").read_bytes()
    assert a == b
    assert (halves / "checkpoints" / "latest").read_text().strip() == "step-000006"
    with pytest.raises(ValueError, match="use another --work folder"):
        train(halves, "tiny-smoke", seed=1, until=7, log=None)


def test_command_ships_the_teacher(prepared, tmp_path):
    from hylo_search.small_teacher.__main__ import main

    work, out = tmp_path / "work", tmp_path / "out"
    _copy_inputs(prepared, work)
    assert main(["--tiny-smoke", "--work", str(work), "--out", str(out)]) == 0
    report = json.loads((out / "training.json").read_text())
    assert report["steps"] == 8 and report["corpus"]["packages"]["click"]["split"] == "heldout"
    assert report["heldout"]["tokens"] > 0 and "niah_single_1" in report["probes"]["accuracy"]
    assert {"model.safetensors", "config.json", "tokenizer.json", "heldout.safetensors"} <= \
        {p.name for p in out.iterdir()}
