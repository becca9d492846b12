"""A trained tiny transformer — the shipped teacher (builtin:tiny, trained here on copying, key–value recall and
needle probes) — scores well above chance on niah_single_1 at short length under both scorers; its all-GDN upcycled
student is scored beside it.

(This test used to train its own teacher for a minute. Under transformers 5.25 the same training code, unchanged,
reaches only 25 % (generate) / 5 % (fast) where 5.24 passed 50 %: the release changed the training numerics, so a
one-minute training run is no stable fixture. The shipped teacher's weights are.)

Chance is about 1e-7 (a 7-digit number has to come out exactly). The student is expected to lose most of it: GDN
layers initialised from attention weights, without distillation, do not keep an induction circuit."""

from __future__ import annotations

import time

import pytest

import hylo_model
from hylo_search.define.teachers import teacher_directory
from hylo_search.probes import generate_samples, score_samples
from tests.probes.helpers import probe_tokenizer

LENGTH, SAMPLES = 320, 20  # a 320-token probe: about 190 prompt tokens + RULER's 128 new tokens


@pytest.fixture(scope="module")
def trained():
    from transformers import AutoModelForCausalLM

    tok = probe_tokenizer()
    start = time.perf_counter()
    teacher = AutoModelForCausalLM.from_pretrained(teacher_directory("builtin:tiny", None), dtype="float32").eval()
    seconds = time.perf_counter() - start
    student = hylo_model.upcycle(teacher, "G,G").float().eval()
    samples = generate_samples("niah_single_1", LENGTH, SAMPLES, tok, seed=11)  # unseen keys and values
    scores = {}
    for name, model in (("teacher", teacher), ("student G,G", student)):
        for scorer in ("fast", "generate"):
            records = score_samples(model, tok, samples, scorer, batch_size=10)
            scores[name, scorer] = sum(r["score"] for r in records) / len(records)
    print(f"\nloaded in {seconds:.1f} s; niah_single_1 at {LENGTH} tokens, {SAMPLES} samples: "
          + ", ".join(f"{name} {scorer} {100 * v:.0f}%" for (name, scorer), v in scores.items()))
    return scores


@pytest.mark.slow
def test_trained_teacher_well_above_chance(trained):
    assert trained["teacher", "generate"] >= 0.5
    assert trained["teacher", "fast"] >= 0.5
    # The scorers measure the same thing: exact canonical answer (fast) vs contained in the output (generate).
    assert abs(trained["teacher", "fast"] - trained["teacher", "generate"]) <= 0.2


@pytest.mark.slow
def test_all_gdn_student_scored_beside_it(trained):
    # "Loses most of it": at most 3 of the 20 needles under either scorer (measured: 0 of 20 under both).
    for scorer in ("fast", "generate"):
        assert trained["student G,G", scorer] <= 0.15, (scorer, trained["student G,G", scorer])
