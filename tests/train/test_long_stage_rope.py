"""What a long stage does to RoPE: the pretraining length stays the reference of the scaling types that read it,
and a change that moves the angles of positions the model was trained at, without going beyond them, is named."""

from __future__ import annotations

import pytest
import torch

from hylo_model.train import load_recipe, run_recipe
from hylo_model.train.stages import long_stage_rope, rope_warning
from tests.helpers import tiny_config, tiny_teacher
from tests.train.conftest import CORPUS


def _long(seq_len: int, rope: dict | None, steps: int = 1) -> dict:
    stage = {"kind": "long", "steps": steps, "seq_len": seq_len, "batch_size": 1, "lr": {"mixers": 1e-4}}
    return {"data": {"sources": [{"path": str(CORPUS)}], "eval_fraction": 0.3, "shuffle_block": 8},
            "eval": {"sequences": 1}, "student": {"qk_rope_head_dim": 8},
            "stages": [{**stage, **({"rope": rope} if rope else {})}]}


@pytest.mark.parametrize("rope, warned", [
    ({"rope_type": "linear", "factor": 2.0}, True),  # every position compressed
    ({"rope_type": "yarn", "factor": 2.0}, True),  # the low frequencies interpolated
    ({"rope_type": "dynamic", "factor": 2.0}, False),  # unchanged up to max_position_embeddings
    ({"rope_type": "default", "rope_theta": 10000.0}, False),  # the same RoPE
])
def test_rope_change_inside_the_trained_context_is_named(rope, warned):
    config = tiny_config("A,L24,M,G")  # 512 positions
    stage = load_recipe(_long(64, rope)).stages[0]
    note = rope_warning(config, dict(config.rope_parameters), 512, stage)
    assert (note is not None) == warned
    if warned:
        assert f"rope {rope['rope_type']!r} changes the rotary angles" in note and "512" in note
    # Past the trained context a change is what a long stage is for: no warning.
    assert rope_warning(config, dict(config.rope_parameters), 512, load_recipe(_long(600, rope)).stages[0]) is None


def test_yarn_without_an_original_length_takes_the_models():
    stage = load_recipe(_long(600, {"rope_type": "yarn", "factor": 2.0})).stages[0]
    assert long_stage_rope(stage, 512)["original_max_position_embeddings"] == 512
    given = load_recipe(_long(600, {"rope_type": "yarn", "factor": 2.0,
                                    "original_max_position_embeddings": 128})).stages[0]
    assert long_stage_rope(given, 512)["original_max_position_embeddings"] == 128


def test_long_stages_past_the_context_keep_the_pretraining_length(tokenizer):
    """teacher: 256 positions; stage: 300 tokens. Dynamic NTK scales from 256 on (the stage's length would switch it
    off inside the stage); yarn interpolates relative to 256; the final model carries both facts."""
    teacher = tiny_teacher("qwen3")
    dynamic = run_recipe(teacher, "A,G,A,G", _long(300, {"rope_type": "dynamic", "factor": 2.0}),
                         tokenizer=tokenizer, progress="off").model
    assert dynamic.config.rope_parameters["rope_type"] == "dynamic"
    assert dynamic.config.max_position_embeddings == 256 and dynamic.model.rope.ntk[1] == 256
    positions = torch.arange(300)[None]
    original = teacher.model.rotary_emb(torch.zeros(1), positions[:, :256])[0][0].float()
    assert torch.allclose(dynamic.model.rope.cos_sin(positions[:, :256], torch.float32)[0][0], original, atol=1e-6)
    assert not torch.allclose(dynamic.model.rope.cos_sin(positions, torch.float32)[0][0, :256], original, atol=1e-3)
    yarn = run_recipe(teacher, "A,G,A,G", _long(300, {"rope_type": "yarn", "factor": 2.0}), tokenizer=tokenizer,
                      progress="off").model
    assert yarn.config.rope_parameters["original_max_position_embeddings"] == 256
    assert yarn.config.max_position_embeddings == 300
