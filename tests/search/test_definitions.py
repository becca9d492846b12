"""Every shipped space and study loads, validates and builds its students on the meta device; bad definitions
fail with one line naming the file, the field and the allowed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from accelerate import init_empty_weights

from hylo_model import HyLoForCausalLM, cache_bytes
from hylo_search.define.files import definition_dirs, shipped_names
from hylo_search.errors import UsageError
from hylo_search.space.baselines import baselines
from hylo_search.space.placements import positions
from hylo_search.space.rules import Budget, CountRule, SearchSpace, select_layers
from hylo_search.study import load_study, student_config_for

from .helpers import write_study

STUDIES = shipped_names("studies")
SPACES = shipped_names("search_spaces")


def test_the_shipped_set_is_complete():
    assert {"qwen1p7b", "llama3p2_1b", "llama3p2_3b", "qwen2p5_3b", "tiny"} <= set(STUDIES)
    assert SPACES, "no shipped search spaces found"


@pytest.mark.parametrize("name", SPACES)
def test_shipped_space_validates_and_compiles(tmp_path, name):
    """Each space bound to a real teacher's dimensions (Qwen3-1.7B's config ships for offline use)."""
    (folder,) = [d for d in definition_dirs("search_spaces") if (d / f"{name}.yaml").is_file()][:1]
    space = SearchSpace.model_validate(yaml.safe_load((folder / f"{name}.yaml").read_text()))
    assert space.name == name
    sampler = "grid" if space.ablation else "tpe"
    loaded = load_study(write_study(tmp_path, teacher="Qwen/Qwen3-1.7B", space=name, sampler={"name": sampler},
                                    upcycle={"qk_rope_head_dim": 64}, target_length=65536))
    space = loaded.space
    assert space.size() >= 1
    fraction, how = space.feasible_fraction(samples=2000)
    if how.startswith("exact"):
        layouts = list(space.iter_tokens())
        assert fraction == sum(space.is_feasible(t) for t in layouts) / len(layouts)
    else:
        # The vectorised estimate against the scalar check on other uniform draws: within 4.5 standard errors of
        # their difference (measured on Qwen3-1.7B: at most 0.033 apart, where the bound is 0.07 at p = 0.5).
        rng = np.random.default_rng(5)
        other = sum(space.is_feasible(space.sample(rng)) for _ in range(2000)) / 2000
        p = (fraction + other) / 2
        assert abs(fraction - other) <= 4.5 * (p * (1 - p) * 2 / 2000) ** 0.5, (fraction, other)
    # Each space admits at least one known layout (an ablation grid runs its own grid instead).
    assert space.is_ablation or any(space.is_feasible(list(b.tokens)) for b in baselines(space))


def _meta_params(config) -> int:
    with init_empty_weights():
        model = HyLoForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    if config.tie_word_embeddings and model.lm_head.weight is not model.model.embed_tokens.weight:
        total -= model.lm_head.weight.numel()
    return total


@pytest.mark.parametrize("name", STUDIES)
def test_shipped_study_loads_and_builds_students_on_meta(name):
    """Each baseline and a few sampled layouts of every shipped study: the student builds on the meta device, and
    the exact costs the search uses equal the model's parameter count and hylo_model.cache_bytes."""
    loaded = load_study(name)
    space = loaded.space
    layouts = [list(b.tokens) for b in baselines(space)]
    rng = np.random.default_rng(0)
    layouts += [space.sample(rng) for _ in range(2)]
    assert layouts
    for tokens in layouts:
        config = student_config_for(loaded, tokens)
        assert config.hylo_layout == ",".join(tokens)
        assert _meta_params(config) == space.costs.layout_params(tokens)
        length = loaded.definition.target_length
        assert cache_bytes(config, length, 1, torch.bfloat16) == space.costs.layout_cache(tokens, length)


def test_text_forms_of_rules_and_budgets():
    assert CountRule.model_validate("attention+mla between 2 and 6").model_dump() == \
        {"mixers": ["attention", "mla"], "min": 2, "max": 6}
    assert CountRule.model_validate("mamba2 == 0").model_dump() == {"mixers": ["mamba2"], "min": 0, "max": 0}
    assert CountRule.model_validate("gdn >= 3").max is None
    cache = Budget.model_validate("cache_bytes@64k <= 10%")
    assert (cache.metric, cache.seq_len, cache.limit, cache.relative) == ("cache_bytes", 65536, 0.1, True)
    params = Budget.model_validate("params <= 1.05x")
    assert (params.metric, params.limit, params.relative) == ("params", 1.05, True)
    assert Budget.model_validate("cache_bytes@32768 <= 2GiB").limit == 2 * 2**30


def test_layer_selectors():
    assert select_layers("1-3", 8) == [1, 2, 3]
    assert select_layers([-1, "first"], 8) == [7, 0]
    assert select_layers("all", 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="out of range for a 8-layer teacher"):
        select_layers(9, 8)


def test_space_compiles_rules_fixed_layers_and_global_rank():
    space = SearchSpace.model_validate({
        "name": "s", "mixers": "all", "linear_blocks": ["gdn"], "mla_ranks": [64, 128], "rank_scope": "global",
        "layers": [{"layers": "1-2", "mixers": ["attention", "mla"]}], "fixed": {0: "A", -1: "G"}})
    compiled = space.compile(5)
    assert compiled.choices == [["A"], ["A", "L"], ["A", "L"], ["A", "L", "G"], ["G"]]
    assert list(compiled.distributions()) == ["layer_01", "layer_02", "layer_03", "mla_rank"]
    tokens = compiled.tokens_from_params({"layer_01": "L", "layer_02": "A", "layer_03": "L", "mla_rank": 128})
    assert tokens == ["A", "L128", "A", "L128", "G"]
    assert compiled.tokens_from_params(compiled.params_from_tokens(tokens)) == tokens
    assert compiled.params_from_tokens(["A", "L64", "A", "L128", "G"]) is None  # two ranks: not in a global space
    assert compiled.size() == 2 * 2 * 3 * 2


def test_placements():
    assert positions(28, 4, "uniform") == [6, 13, 20, 27]
    assert positions(28, 4, "smart") == [0, 9, 18, 27]
    assert positions(6, 2, "end") == [4, 5]
    assert positions(6, 0, "smart") == []


@pytest.mark.parametrize("data, field, allowed", [
    ({"mixers": ["attention", "mamba3"]}, "mixers", "allowed: attention, mla, mamba2, gdn"),
    ({"mixers": ["attention", "mla"], "mla_ranks": []}, "(top level)", "give mla_ranks"),
    ({"mixers": ["attention"], "colour": "red"}, "(top level)", "allowed: name, description"),
    ({"mixers": ["attention"], "counts": ["attention is many"]}, "counts.0", "allowed forms"),
    ({"mixers": ["attention"], "budgets": ["flops <= 3"]}, "budgets.0", "metrics: cache_bytes, params"),
    ({"mixers": "all", "mla_ranks": [60]}, "(top level)", "multiple of rank_multiple=8"),
    ({"mixers": ["attention"], "rank_scope": "per-head"}, "rank_scope", "'layer' or 'global'"),
])
def test_bad_space_names_field_and_allowed_values(tmp_path, data, field, allowed):
    path = write_study(tmp_path, space={"name": "bad", **data})
    with pytest.raises(UsageError) as error:
        load_study(path)
    message = str(error.value)
    assert message.startswith(f"{path} (space): field '{field}'") and allowed in message
    assert "\n" not in message


def test_bad_study_fields(tmp_path):
    with pytest.raises(UsageError, match=r"field 'sampler.name'.*'tpe', 'nsga2', 'gp', 'random', 'brute_force'"):
        load_study(write_study(tmp_path, sampler={"name": "cmaes"}))
    with pytest.raises(UsageError, match=r"field 'objectives.0.metric': unknown metric 'flops'; allowed: cache_bytes"):
        load_study(write_study(tmp_path, objectives=[{"metric": "flops", "direction": "minimize"}]))
    with pytest.raises(UsageError, match=r"field 'teacher'.*built-in teacher 'builtin:huge'; allowed: builtin:tiny"):
        load_study(write_study(tmp_path, teacher="builtin:huge"))
    with pytest.raises(UsageError, match=r"field 'mla_ranks': rank 512 is larger than this teacher allows; "
                                         r"allowed: 1..64"):
        load_study(write_study(tmp_path, space={"mla_ranks": [512]}))
    with pytest.raises(UsageError, match=r"unknown study 'nope'; shipped: .*qwen1p7b"):
        load_study("nope")


def test_impossible_constraints_are_caught_at_load(tmp_path):
    with pytest.raises(UsageError, match=r"field 'budgets.0': impossible constraint cache_bytes@512 <= 0.01x "
                                         r"teacher: the smallest layout .* allowed limits: >= 0\.12"):
        load_study(write_study(tmp_path, space={"budgets": ["cache_bytes@512 <= 1%"]}))
    with pytest.raises(UsageError, match=r"field 'counts': no layout of the space meets the count rules"):
        load_study(write_study(tmp_path, space={"counts": ["attention+mla between 5 and 6"]}))
    # Count rules and a budget that each allow layouts but not together: at least one attention/MLA layer is
    # required, and the budget leaves room for none.
    with pytest.raises(UsageError, match="impossible constraint"):
        load_study(write_study(tmp_path, space={"mixers": ["attention", "gdn"], "mla_ranks": [],
                                                "budgets": ["cache_bytes@512 <= 20%"]}))
