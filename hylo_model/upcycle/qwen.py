"""Qwen2 / Qwen2.5 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm): key tables and config translation."""

from __future__ import annotations

from typing import Any

from .families import Family, common_config

QWEN2_ATTENTION_KEYS = {
    "q_proj.weight": "self_attn.q_proj.weight",
    "k_proj.weight": "self_attn.k_proj.weight",
    "v_proj.weight": "self_attn.v_proj.weight",
    "o_proj.weight": "self_attn.o_proj.weight",
    "q_proj.bias": "self_attn.q_proj.bias",
    "k_proj.bias": "self_attn.k_proj.bias",
    "v_proj.bias": "self_attn.v_proj.bias",
}

QWEN3_ATTENTION_KEYS = {
    "q_proj.weight": "self_attn.q_proj.weight",
    "k_proj.weight": "self_attn.k_proj.weight",
    "v_proj.weight": "self_attn.v_proj.weight",
    "o_proj.weight": "self_attn.o_proj.weight",
    "q_proj.bias": "self_attn.q_proj.bias",
    "k_proj.bias": "self_attn.k_proj.bias",
    "v_proj.bias": "self_attn.v_proj.bias",
    "q_norm.weight": "self_attn.q_norm.weight",
    "k_norm.weight": "self_attn.k_norm.weight",
}


def _reject_sliding_window(cfg: Any) -> None:
    if getattr(cfg, "use_sliding_window", False) and "sliding_attention" in (getattr(cfg, "layer_types", None) or []):
        raise ValueError(
            f"{cfg.model_type} teacher uses sliding-window attention (use_sliding_window=True); HyLo attention "
            "layers are full attention. Set use_sliding_window=False in the teacher's config to upcycle it."
        )


def qwen2_config(cfg: Any) -> dict[str, Any]:
    _reject_sliding_window(cfg)
    values = common_config(cfg)
    values.update(attention_bias=True, mlp_bias=False, qk_norm=False)
    return values


def qwen3_config(cfg: Any) -> dict[str, Any]:
    _reject_sliding_window(cfg)
    values = common_config(cfg)
    values.update(attention_bias=bool(getattr(cfg, "attention_bias", False)), mlp_bias=False, qk_norm=True)
    return values


QWEN2 = Family(name="qwen2", model_types=("qwen2",), config_from_teacher=qwen2_config,
               attention_keys=QWEN2_ATTENTION_KEYS)
QWEN3 = Family(name="qwen3", model_types=("qwen3",), config_from_teacher=qwen3_config,
               attention_keys=QWEN3_ATTENTION_KEYS)
