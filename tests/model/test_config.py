"""Layouts as values and config validation: round trips, and errors that name the layer/field and allowed values."""

from __future__ import annotations

import pytest

from hylo_model import HyLoConfig, Layout
from tests.helpers import tiny_config


@pytest.mark.parametrize("code", ["A,L128,M,G", "A,L,M,G", "G,G,G,A", "L8,L16,L24,L32"])
def test_compact_code_round_trips(code):
    layout = Layout.parse(code)
    assert str(layout) == code
    assert Layout.parse(str(layout)) == layout
    assert Layout.from_dict(layout.to_dict()) == layout


def test_full_names_repeats_and_dict_forms():
    assert Layout.parse("attention,mla128,mamba2,gdn") == Layout.parse("A,L128,M,G")
    assert Layout.parse("mla:64, Gated_DeltaNet, mamba") == Layout.parse("L64,G,M")
    assert str(Layout.parse("A,G*3,L16*2")) == "A,G,G,G,L16,L16"
    assert Layout.from_dict({"layers": ["A", {"mixer": "mla", "kv_lora_rank": 32}, "G"]}) == Layout.parse("A,L32,G")
    assert Layout.parse("A,L32,M,G").counts() == {"attention": 1, "mla": 1, "mamba2": 1, "gdn": 1}


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("A,X,G", r"layer 1: unknown mixer 'X'; allowed: A, L<rank>, M, G"),
        ("A,G3,G", r"layer 1: 'G3' takes no rank"),
        ("A,L0", r"layer 1: kv_lora_rank must be >= 1"),
        ("", r"layer 0: unknown mixer ''"),
    ],
)
def test_bad_codes_name_the_layer(code, message):
    with pytest.raises(ValueError, match=message):
        Layout.parse(code)


def test_bad_dicts_name_the_field():
    with pytest.raises(ValueError, match=r"layers\[1\]\.mixer 'conv' is unknown; allowed: attention, mla"):
        Layout.from_dict({"layers": ["A", {"mixer": "conv"}]})
    with pytest.raises(ValueError, match=r"layers\[0\] has unknown fields \['rank'\]"):
        Layout.from_dict({"layers": [{"mixer": "mla", "rank": 3}]})
    with pytest.raises(ValueError, match="disagrees with 'layers'"):
        Layout.from_dict({"code": "A,G", "layers": ["A", "M"]})
    with pytest.raises(ValueError, match="needs a 'code' or 'layers' field"):
        Layout.from_dict({"mixers": "A"})


def test_config_checks_the_layout_against_the_model():
    with pytest.raises(ValueError, match="has 3 layers but the model has 4"):
        HyLoConfig(num_hidden_layers=4, hylo_layout="A,L,M")
    with pytest.raises(ValueError, match=r"layer 1: kv_lora_rank 4096 is out of range; allowed: 1\.\.64"):
        tiny_config("A,L4096,M,G")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(num_key_value_heads=3), r"HyLoConfig\.num_key_value_heads: 3 must divide num_attention_heads=4"),
        (dict(qk_rope_head_dim=7), r"HyLoConfig\.qk_rope_head_dim: 7 must be a positive even number"),
        (dict(mla_rope_heads=3), r"HyLoConfig\.mla_rope_heads: 3 must divide num_attention_heads=4"),
        (dict(mamba_n_groups=3), r"HyLoConfig\.mamba_n_groups: 3 must divide mamba_num_heads=4"),
        (dict(gdn_num_v_heads=6), r"HyLoConfig\.gdn_num_v_heads: 6 must be a multiple of gdn_num_heads=4"),
        (dict(mla_rope_pairs=[None, [0, 1], None, None]), r"mla_rope_pairs\[1\]: has 2 pairs but qk_rope_head_dim=8"),
        (dict(mla_rope_pairs=[None]), r"mla_rope_pairs: needs one entry per layer \(4\)"),
    ],
)
def test_bad_configs_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_saves_and_reloads(tmp_path):
    config = tiny_config(mla_rope_pairs=[None, [0, 2, 3, 5], None, None])
    config.save_pretrained(tmp_path)
    again = HyLoConfig.from_pretrained(tmp_path)
    assert again.layout == config.layout and again.mla_rope_pairs == config.mla_rope_pairs
    assert again.with_layout("A,A,A,A").layout == Layout.parse("A,A,A,A")
