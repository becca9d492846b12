"""``upcycle(teacher, layout)``: a Llama / Qwen2 / Qwen3 checkpoint turned into a HyLo student of any layout."""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import PreTrainedModel

from ..config import HyLoConfig
from ..layout import Layout
from ..model import HyLoForCausalLM
from ..version import __version__
from .init import PAIR_STRATEGIES, gdn_weights, mamba2_weights, mla_weights, select_rope_pairs
from .source import TeacherSource

# Teacher tensors that carry no weights of their own (recomputed from the config).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "rotary_emb.original_inv_freq")


def student_config(
    source: TeacherSource,
    layout: Layout,
    *,
    kv_lora_rank: int | None = None,
    q_lora_rank: int | None = None,
    qk_rope_head_dim: int | None = None,
    mla_rope_heads: int = 1,
    mla_kv_norm: bool = False,
    rope_pairs: str | list[list[int] | None] = "qk_norm",
    **overrides: Any,
) -> HyLoConfig:
    """The student's config: the teacher's dimensions, the layout, and mixer dimensions the recipes need."""
    cfg = source.config
    values = source.family.config_from_teacher(cfg)
    heads, kv_heads = values["num_attention_heads"], values["num_key_value_heads"]
    head_dim = values["head_dim"]
    rope_dim = qk_rope_head_dim if qk_rope_head_dim is not None else head_dim // 2
    if rope_dim % 2 or not 0 < rope_dim <= head_dim:
        raise ValueError(f"qk_rope_head_dim must be even and in 2..{head_dim} (the teacher's head_dim), got {rope_dim}")
    max_rank = min(values["hidden_size"], kv_heads * (2 * head_dim - rope_dim))
    values.update(
        hylo_layout=str(layout),
        kv_lora_rank=kv_lora_rank or min(512, max_rank),
        q_lora_rank=q_lora_rank,
        qk_rope_head_dim=rope_dim,
        qk_nope_head_dim=head_dim - rope_dim,
        v_head_dim=head_dim,
        mla_rope_heads=mla_rope_heads,
        mla_kv_norm=mla_kv_norm,
        mamba_num_heads=heads,
        mamba_head_dim=head_dim,
        mamba_d_state=head_dim,
        mamba_n_groups=heads,
        mamba_xb_heads=kv_heads,
        gdn_num_heads=heads,
        gdn_num_v_heads=heads,
        gdn_head_k_dim=head_dim,
        gdn_head_v_dim=head_dim,
        mamba_gate_bias=True,
        gdn_gate_bias=True,
    )
    values.update(overrides)
    if "mla" in layout.mixers:
        if isinstance(rope_pairs, str):
            if rope_pairs not in PAIR_STRATEGIES:
                raise ValueError(f"rope_pairs {rope_pairs!r} is unknown; allowed: {', '.join(PAIR_STRATEGIES)} "
                                 "or an explicit list of pair indices per layer")
            probe = HyLoConfig(**values)
            pairs: list[list[int] | None] = [
                select_rope_pairs(_attention_tensors(source, i), probe, rope_pairs) if spec.mixer == "mla" else None
                for i, spec in enumerate(layout)
            ]
        else:
            pairs = list(rope_pairs)
        values["mla_rope_pairs"] = pairs
    return HyLoConfig(**values)


def _attention_tensors(source: TeacherSource, layer_idx: int) -> dict[str, torch.Tensor]:
    prefix = f"model.layers.{layer_idx}."
    return {
        student_key: source.get(prefix + teacher_key)
        for student_key, teacher_key in source.family.attention_keys.items()
        if source.has(prefix + teacher_key)
    }


@torch.no_grad()
def upcycle(
    teacher: PreTrainedModel | str | os.PathLike,
    layout: Layout | str,
    *,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    init: str = "teacher",
    svd: str = "joint",
    **config_options: Any,
) -> HyLoForCausalLM:
    """Convert ``teacher`` into a :class:`HyLoForCausalLM` with ``layout``.

    ``teacher``: a loaded Llama/Qwen2/Qwen3 causal LM, a local directory, or a hub id (safetensors only,
    ``trust_remote_code`` off). Embeddings, LM head, norms and MLPs are copied exactly; attention layers are the
    teacher's weights bit for bit; MLA, Mamba2 and GDN layers are initialised from the teacher's Q/K/V/O as
    documented in :mod:`hylo_model.upcycle.init`. ``init="random"`` leaves the new mixers at their default random
    init (the ablation baseline). ``config_options`` go to :func:`student_config` (``kv_lora_rank``,
    ``q_lora_rank``, ``qk_rope_head_dim``, ``mla_rope_heads``, ``mla_kv_norm``, ``rope_pairs``, or any
    HyLoConfig field). Deterministic given ``seed``. ``dtype`` defaults to the teacher's.
    """
    if init not in ("teacher", "random"):
        raise ValueError(f"init must be 'teacher' or 'random', got {init!r}")
    source = TeacherSource.from_any(teacher)
    layout = Layout.parse(layout, source.config.num_hidden_layers)
    config = student_config(source, layout, **config_options)
    device = torch.device(device) if device is not None else _teacher_device(source)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device):
            student = HyLoForCausalLM(config).float()
    state = student.state_dict()
    used: set[str] = set()

    def put(student_key: str, value: torch.Tensor) -> None:
        target = state[student_key]
        if target.shape != value.shape:
            raise ValueError(f"{student_key}: teacher gives shape {tuple(value.shape)}, student has {tuple(target.shape)}")
        target.copy_(value.to(target.device, target.dtype))

    def take(teacher_key: str) -> torch.Tensor:
        used.add(teacher_key)
        return source.get(teacher_key)

    family = source.family
    for student_key, teacher_key in family.dense_keys.items():
        if student_key == "lm_head.weight" and config.tie_word_embeddings:
            used.add(teacher_key)
            continue
        put(student_key, take(teacher_key))
    for i, spec in enumerate(layout):
        for student_key, teacher_key in {**family.layer_dense_keys, **family.mlp_bias_keys}.items():
            key = teacher_key.format(i=i)
            if source.has(key):
                put(student_key.format(i=i), take(key))
        prefix = f"model.layers.{i}."
        att = {k: take(prefix + t) for k, t in family.attention_keys.items() if source.has(prefix + t)}
        mixer = f"model.layers.{i}.mixer."
        if spec.mixer == "attention":
            weights = att
        elif init == "random":
            weights = {}
        elif spec.mixer == "mla":
            weights = mla_weights(att, config, i, config.layer_rope_pairs(i), svd=svd)
        else:
            current = {k[len(mixer):]: v for k, v in state.items() if k.startswith(mixer)}
            build = mamba2_weights if spec.mixer == "mamba2" else gdn_weights
            weights = build(att, config, current)
        for name, value in weights.items():
            put(mixer + name, value)

    unused = [k for k in source.names() if k not in used and not k.endswith(_IGNORED_SUFFIXES)]
    if unused:
        raise ValueError(f"teacher tensors not mapped by the {family.name} key table: {unused[:8]}"
                         f"{' ...' if len(unused) > 8 else ''}")
    student.tie_weights()
    student.to(dtype or source.dtype)
    config.hylo_provenance = {
        "teacher": source.name,
        "teacher_family": family.name,
        "teacher_fingerprint": source.fingerprint(),
        "layout": str(layout),
        "init": init,
        "svd": svd,
        "seed": seed,
        "options": {k: v for k, v in config_options.items() if k != "rope_pairs" or isinstance(v, str)},
        "hylo_version": __version__,
    }
    return student.eval()


def _teacher_device(source: TeacherSource) -> torch.device:
    if source.model is not None:
        try:
            return next(source.model.parameters()).device
        except StopIteration:
            pass
    return torch.device("cpu")


