"""Llama (Llama-2/3.x, including Llama-3 rope scaling): key table and config translation."""

from __future__ import annotations

from typing import Any

from .families import Family, common_config

ATTENTION_KEYS = {
    "q_proj.weight": "self_attn.q_proj.weight",
    "k_proj.weight": "self_attn.k_proj.weight",
    "v_proj.weight": "self_attn.v_proj.weight",
    "o_proj.weight": "self_attn.o_proj.weight",
    "q_proj.bias": "self_attn.q_proj.bias",
    "k_proj.bias": "self_attn.k_proj.bias",
    "v_proj.bias": "self_attn.v_proj.bias",
}

MLP_BIAS_KEYS = {
    "model.layers.{i}.mlp.gate_proj.bias": "model.layers.{i}.mlp.gate_proj.bias",
    "model.layers.{i}.mlp.up_proj.bias": "model.layers.{i}.mlp.up_proj.bias",
    "model.layers.{i}.mlp.down_proj.bias": "model.layers.{i}.mlp.down_proj.bias",
}


def config_from_teacher(cfg: Any) -> dict[str, Any]:
    values = common_config(cfg)
    values.update(attention_bias=bool(getattr(cfg, "attention_bias", False)),
                  mlp_bias=bool(getattr(cfg, "mlp_bias", False)), qk_norm=False)
    return values


LLAMA = Family(
    name="llama",
    model_types=("llama",),
    config_from_teacher=config_from_teacher,
    attention_keys=ATTENTION_KEYS,
    mlp_bias_keys=MLP_BIAS_KEYS,
)
