"""Tiny configurations and models for tests (no downloads)."""

from __future__ import annotations

import torch

from hylo_model import HyLoConfig, HyLoForCausalLM

MIXED_LAYOUT = "A,L24,M,G"


def tiny_config(layout: str = MIXED_LAYOUT, **overrides) -> HyLoConfig:
    """Four mixers at tiny width; GQA (4 heads, 2 KV heads), Mamba2 with GQA-style x/B, GDN with 4 heads."""
    num_layers = len(layout.split(","))
    values = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        hylo_layout=layout,
        kv_lora_rank=24,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        mamba_num_heads=4,
        mamba_head_dim=16,
        mamba_d_state=16,
        mamba_n_groups=4,
        mamba_xb_heads=2,
        mamba_chunk_size=16,
        gdn_num_heads=4,
        gdn_head_k_dim=16,
        gdn_head_v_dim=16,
        gdn_chunk_size=16,
    )
    values.update(overrides)
    return HyLoConfig(**values)


def tiny_model(layout: str = MIXED_LAYOUT, seed: int = 0, **overrides) -> HyLoForCausalLM:
    torch.manual_seed(seed)
    model = HyLoForCausalLM(tiny_config(layout, **overrides)).float().eval()
    # Random init leaves the linear mixers' signals tiny; scale up so the invariants are tested on real values.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("a_proj.weight", "b_proj.weight")):
                param.mul_(10)
    return model


def tiny_teacher(family: str = "llama", seed: int = 0, std: float = 0.05, **overrides):
    """A tiny random Llama / Qwen2 / Qwen3 built locally from a transformers config (no download).

    Weights are drawn with a larger std than transformers' default so attention is far from uniform and
    reconstruction numbers mean something."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    classes = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
               "qwen3": (Qwen3Config, Qwen3ForCausalLM)}
    config_class, model_class = classes[family]
    values = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                  rms_norm_eps=1e-6, tie_word_embeddings=family != "llama", initializer_range=std)
    if family == "llama":
        values["rope_parameters"] = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                     "original_max_position_embeddings": 64}
    values.update(overrides)
    torch.manual_seed(seed)
    model = model_class(config_class(**values)).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                param.normal_(0, std)
    return model


def fla_reference(op: str):
    """fla's pure-torch reference module ``fla/ops/<op>/naive.py``, loaded by file path: importing ``fla.ops``
    normally needs triton, which CPU installs do not have. fla-core is a test dependency (pyproject ``test``)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("fla-core is not installed; install the test extra: pip install -e '.[test]'")
    path = Path(spec.submodule_search_locations[0]) / "ops" / op / "naive.py"
    module_spec = importlib.util.spec_from_file_location(f"fla_{op}_naive", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def assert_fla_refuses_gated_backward() -> None:
    """fla's own gated chunk backward kernel (``chunk_bwd_dqkwg``, which GDN's and simple GLA's backwards reach)
    raises on this GPU (Hopper with 3.4 <= Triton < 3.7.1, fla #640). Called alone on tiny tensors: it refuses
    before reading them, where reaching it through a whole backward first autotunes every earlier kernel (minutes)."""
    import pytest
    from fla.ops.common.chunk_o import chunk_bwd_dqkwg

    t = torch.zeros(1, 64, 1, 64, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="#640"):
        chunk_bwd_dqkwg(t, t, t, t, t, t, g=torch.zeros(1, 64, 1, device="cuda"))
