"""Every shipped recipe loads and validates; a bad recipe is one clear error naming the file and the field."""

from __future__ import annotations

import math
import re

import pytest

from hylo_model.train import load_recipe, shipped_recipes
from hylo_model.train.recipe import GROUPS, AlignStage, DistillStage, LongStage, RecipeError
from hylo_model.train.trainer import lr_factor

SHIPPED = sorted(shipped_recipes())


def test_the_expected_recipes_ship():
    assert {"tiny", "proxy_tiny", "proxy_small", "qwen3_1.7b", "llama3.2_3b"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipe_loads_and_validates(name):
    recipe = load_recipe(name)
    assert recipe.source.endswith(f"{name}.yaml") and recipe.name == name
    assert len(set(recipe.stage_names())) == len(recipe.stages)
    for index, stage in enumerate(recipe.stages):
        assert stage.num_steps >= 1 and set(stage.lr) <= set(GROUPS)
        data = recipe.stage_data(index)
        assert data is not None, f"stage {index} has no data"
        for source in data.sources:
            if source.path:
                assert recipe.resolve_path(source.path).exists(), source.path
        if isinstance(stage, AlignStage):
            assert set(stage.lr) == {"mixers"}
        if isinstance(stage, DistillStage):
            assert stage.kl_weight > 0 or stage.ce_weight > 0
        # The published recipes split over 8 GPUs (micro-batches of whole sequences on every process).
        if name not in ("tiny", "proxy_tiny", "proxy_small", "proxy_long_32k", "proxy_long_64k", "promote_tiny"):
            assert stage.batch_size % (8 * (stage.micro_batch_size or 1)) == 0, stage.name
    kinds = [stage.kind for stage in recipe.stages]
    assert kinds[0] == "align" and "distill" in kinds
    assert kinds == sorted(kinds, key=["align", "distill", "long"].index)


def test_long_stage_schedules_grow_and_carry_rope_changes():
    recipe = load_recipe("qwen3_1.7b")
    longs = [s for s in recipe.stages if isinstance(s, LongStage)]
    lengths = [s.seq_len for s in longs]
    assert lengths == sorted(lengths) and lengths[0] > recipe.stages[1].seq_len
    rope = longs[-1].rope.parameters()
    assert rope["rope_type"] == "yarn" and rope["factor"] == 2.0 and longs[-1].rope_teacher


def test_budget_and_seed_rescaling():
    recipe = load_recipe("proxy_small")
    small = recipe.with_budget(2_000_000)
    assert abs(small.total_tokens() - 2_000_000) / 2_000_000 < 0.1
    ratio = [s.num_steps for s in small.stages]
    assert ratio[1] > ratio[0] >= 1
    assert small.with_seed(5).seed == 5 and small.fingerprint() != recipe.fingerprint()


def test_lr_schedule_shapes():
    assert [round(lr_factor(s, 10, 2, "constant", 0), 3) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]
    cosine = [lr_factor(s, 10, 0, "cosine", 0.1) for s in range(10)]
    assert cosine[0] == 1.0 and math.isclose(cosine[-1], 0.1) and all(a >= b for a, b in zip(cosine, cosine[1:]))
    linear = [lr_factor(s, 5, 1, "linear", 0.0) for s in range(5)]
    assert linear == pytest.approx([1.0, 1.0, 2 / 3, 1 / 3, 0.0])


STAGE = "{kind: distill, steps: 3, seq_len: 16, batch_size: 4, lr: 1.0e-3}"
BAD = {
    "unknown-kind": ("stages: [{kind: finetune, steps: 3, seq_len: 16, batch_size: 4, lr: 1.0e-3}]",
                     r"field 'stages\[0\]\.kind': unknown stage kind 'finetune'; allowed: align, distill, long"),
    "missing-kind": ("stages: [{steps: 3, seq_len: 16, batch_size: 4, lr: 1.0e-3}]",
                     r"field 'stages\[0\]\.kind': missing; allowed: align, distill, long"),
    "missing-field": ("stages: [{kind: distill, steps: 3, batch_size: 4, lr: 1.0e-3}]",
                      r"field 'stages\[0\]\.seq_len': missing \(required\)"),
    "wrong-type": ("stages: [{kind: distill, steps: many, seq_len: 16, batch_size: 4, lr: 1.0e-3}]",
                   r"field 'stages\[0\]\.steps': Input should be a valid integer.*\(got 'many'\)"),
    "unknown-field": ("stages: [{kind: distill, steps: 3, seq_len: 16, batch_size: 4, lr: 1.0e-3, temp: 2}]",
                      r"field 'stages\[0\]\.temp': unknown field; allowed here: .*temperature"),
    "unknown-group": ("stages: [{kind: distill, steps: 3, seq_len: 16, batch_size: 4, lr: {mlps: 1.0e-3}}]",
                      r"field 'stages\[0\]\.lr': unknown parameter group 'mlps'; allowed: mixers, attention, mlp"),
    "align-trains-mlp": ("stages: [{kind: align, steps: 3, seq_len: 16, batch_size: 4, lr: {mlp: 1.0e-3}}]",
                         r"field 'stages\[0\]\.lr': an align stage trains only the converted mixers"),
    "steps-and-tokens": ("stages: [{kind: align, steps: 3, tokens: 9, seq_len: 16, batch_size: 4, lr: 1.0e-3}]",
                         r"field 'stages\[0\]': give exactly one of 'steps' or 'tokens'"),
    "negative-weight": (f"stages: [{STAGE[:-1]}, kl_weight: -1}}]",
                        r"field 'stages\[0\]\.kl_weight': Input should be greater than or equal to 0"),
    "bad-rope-type": ("stages: [{kind: long, steps: 3, seq_len: 16, batch_size: 4, lr: 1.0e-3, "
                      "rope: {rope_type: ntk}}]", r"field 'stages\[0\]\.rope\.rope_type': .*'yarn'.*\(got 'ntk'\)"),
    "bad-precision": (f"runtime: {{mixed_precision: fp8}}\nstages: [{STAGE}]",
                      r"field 'runtime\.mixed_precision': Input should be 'auto', 'no' or 'bf16'"),
    "source-both": (f"data: {{sources: [{{path: a.txt, dataset: b}}]}}\nstages: [{STAGE}]",
                    r"field 'data\.sources\[0\]': give exactly one of 'path' \(local files\) or 'dataset'"),
    "no-stages": ("stages: []", r"field 'stages': List should have at least 1 item"),
    "top-level-typo": (f"stage: [{STAGE}]", r"field 'stage': unknown field; allowed here: name, description"),
    "not-a-mapping": ("- just\n- a list", r"a recipe is a YAML mapping with a 'stages' list"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_names_the_file_and_field(tmp_path, case):
    text, pattern = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert re.search(pattern, message), message


def test_unknown_recipe_name_lists_the_shipped_ones():
    with pytest.raises(RecipeError, match=r"recipe 'nope': no such file, and not a shipped recipe \(shipped: .*tiny"):
        load_recipe("nope")
    assert "tiny" in shipped_recipes()
