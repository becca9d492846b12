"""Changing RoPE in place gives exactly the model built from the new config (student and teacher)."""

from __future__ import annotations

import pytest
import torch

from hylo_model import HyLoForCausalLM, upcycle
from hylo_model.train.rope import check_rope_parameters, restore_teacher_rope, set_rope_parameters, set_teacher_rope
from tests.helpers import tiny_model, tiny_teacher

IDS = torch.randint(0, 97, (2, 40), generator=torch.Generator().manual_seed(0))
NEW_ROPES = [
    {"rope_type": "default", "rope_theta": 40000.0},
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 128},
]


def _ropes(model) -> list[tuple[torch.Tensor, float]]:
    out = [(model.model.rope.inv_freq, model.model.rope.scaling)]
    out += [(layer.mixer.rope.inv_freq, layer.mixer.rope.scaling) for layer in model.model.layers
            if layer.mixer_type == "mla"]
    return out


def _students():
    # MLA with its own RoPE grid (tiny_model) and MLA reusing the teacher's frequency pairs (upcycled).
    return [tiny_model("A,L24,M,L16"), upcycle(tiny_teacher("qwen3"), "A,L16,G,L8", qk_rope_head_dim=8)]


@pytest.mark.parametrize("which", [0, 1], ids=["fresh-grid-MLA", "teacher-pairs-MLA"])
def test_unchanged_parameters_rebuild_identical_frequencies(which):
    model = _students()[which]
    before = [(f.clone(), s) for f, s in _ropes(model)]
    set_rope_parameters(model, dict(model.config.rope_parameters))
    assert all(torch.equal(a, b) and s == t for (a, s), (b, t) in zip(before, _ropes(model)))


@pytest.mark.parametrize("which", [0, 1], ids=["fresh-grid-MLA", "teacher-pairs-MLA"])
@pytest.mark.parametrize("rope", NEW_ROPES, ids=lambda r: r["rope_type"])
def test_changed_rope_equals_a_model_built_from_the_new_config(which, rope):
    model = _students()[which].eval()
    before = model(IDS, use_cache=False).logits
    set_rope_parameters(model, rope, max_position_embeddings=256)
    fresh = HyLoForCausalLM(model.config).eval()
    fresh.load_state_dict(model.state_dict())
    for (a, s), (b, t) in zip(_ropes(model), _ropes(fresh)):
        assert torch.equal(a, b) and s == t
    got = model(IDS, use_cache=False).logits
    assert torch.equal(got, fresh(IDS, use_cache=False).logits)
    assert not torch.allclose(got, before)  # the change reached the attention and MLA layers
    assert model.config.rope_parameters["rope_type"] == rope["rope_type"]


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_teacher_rope_change_and_restore(family):
    teacher = tiny_teacher(family)
    before = teacher(IDS).logits
    saved = set_teacher_rope(teacher, {"rope_type": "linear", "factor": 2.0}, max_position_embeddings=512)
    changed = teacher(IDS).logits
    fresh = type(teacher)(teacher.config).eval()
    fresh.load_state_dict(teacher.state_dict())
    assert torch.equal(changed, fresh(IDS).logits) and not torch.allclose(changed, before)
    restore_teacher_rope(teacher, saved)
    assert torch.equal(teacher(IDS).logits, before)


def test_unusable_rope_parameters_are_reported():
    model = tiny_model("A,L24,M,G")
    with pytest.raises(ValueError, match="rope parameters .* are not usable"):
        check_rope_parameters(model.config, {"rope_type": "llama3", "factor": 8.0})
