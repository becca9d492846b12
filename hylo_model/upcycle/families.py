"""What a supported teacher family looks like: its config translation and its explicit key tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# Student keys that come from the teacher unchanged in every supported family ({i} = layer index).
DENSE_KEYS: dict[str, str] = {
    "model.embed_tokens.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
LAYER_DENSE_KEYS: dict[str, str] = {
    "model.layers.{i}.input_layernorm.weight": "model.layers.{i}.input_layernorm.weight",
    "model.layers.{i}.post_attention_layernorm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "model.layers.{i}.mlp.gate_proj.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "model.layers.{i}.mlp.up_proj.weight": "model.layers.{i}.mlp.up_proj.weight",
    "model.layers.{i}.mlp.down_proj.weight": "model.layers.{i}.mlp.down_proj.weight",
}


@dataclass(frozen=True)
class Family:
    """A teacher family. ``attention_keys`` maps the student attention layer's keys to the teacher's; optional
    keys (biases, q/k norms) are copied only when the family has them."""

    name: str
    model_types: tuple[str, ...]
    config_from_teacher: Callable[[Any], dict[str, Any]]
    attention_keys: dict[str, str]
    dense_keys: dict[str, str] = field(default_factory=lambda: dict(DENSE_KEYS))
    layer_dense_keys: dict[str, str] = field(default_factory=lambda: dict(LAYER_DENSE_KEYS))
    mlp_bias_keys: dict[str, str] = field(default_factory=dict)


def common_config(teacher_config: Any) -> dict[str, Any]:
    """The dimensions every Llama-like family shares, as HyLoConfig keyword arguments."""
    cfg = teacher_config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    if not rope:
        rope = dict(getattr(cfg, "rope_scaling", None) or {"rope_type": "default"})
        rope.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    return dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads or cfg.num_attention_heads,
        head_dim=head_dim,
        hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)),
        rope_parameters=rope,
        bos_token_id=getattr(cfg, "bos_token_id", None),
        eos_token_id=getattr(cfg, "eos_token_id", None),
        pad_token_id=getattr(cfg, "pad_token_id", None),
    )
