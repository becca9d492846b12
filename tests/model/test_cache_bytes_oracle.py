"""`cache_bytes` against an independent count: the bytes of the tensors a real bf16 cache holds, read off the
tensors themselves (shape x element size, per name), with the dtype of every state checked by name.

The float32 cache cannot tell activation bytes from state bytes (both are 4 per element), so a prediction that
counted the Mamba2/GDN states at the activation dtype would agree with it; a bf16 cache holds the two at 2 and 4
bytes per element and tells them apart.
"""

from __future__ import annotations

import pytest
import torch

from hylo_model import HyLoCache, cache_bytes, layer_cache_bytes
from tests.helpers import MIXED_LAYOUT, tiny_model

# What each layer type stores, by name, and the dtype each tensor must have in a bf16 model.
STORED = {
    "attention": {"key": torch.bfloat16, "value": torch.bfloat16},
    "mla": {"latent_pe": torch.bfloat16},
    "mamba2": {"conv": torch.bfloat16, "ssm": torch.float32},
    "gdn": {"conv_q": torch.bfloat16, "conv_k": torch.bfloat16, "conv_v": torch.bfloat16, "recurrent": torch.float32},
}


def _tensor_bytes(entry: dict[str, torch.Tensor]) -> int:
    total = 0
    for tensor in entry.values():
        count = 1
        for size in tensor.shape:
            count *= size
        total += count * {torch.bfloat16: 2, torch.float32: 4}[tensor.dtype]
    return total


@pytest.fixture(scope="module")
def bf16_model():
    return tiny_model(MIXED_LAYOUT).to(torch.bfloat16)


@pytest.mark.parametrize("batch, length", [(1, 1), (3, 13), (2, 40)])
@torch.no_grad()
def test_cache_bytes_equal_the_tensors_of_a_real_bf16_cache(bf16_model, batch, length):
    config = bf16_model.config
    cache = HyLoCache(config)
    bf16_model(torch.randint(0, 97, (batch, length)), cache=cache, use_cache=True)
    measured = []
    for i, mixer in enumerate(config.layer_mixers):
        entry = cache.layers[i]
        assert {name: t.dtype for name, t in entry.items()} == STORED[mixer], f"layer {i} ({mixer})"
        measured.append(_tensor_bytes(entry))
        assert layer_cache_bytes(config, i, length, batch, torch.bfloat16) == measured[-1], f"layer {i} ({mixer})"
    assert cache_bytes(config, length, batch, torch.bfloat16) == sum(measured)
    assert bf16_model.cache_bytes(length, batch_size=batch) == sum(measured)  # the model's dtype is the default


@torch.no_grad()
def test_linear_states_are_float32_at_the_expected_shapes(bf16_model):
    """The state shapes written out from the config: Mamba2 ``ssm`` ``[B, H, P, N]``, GDN ``recurrent``
    ``[B, HV, Dk, Dv]``, both float32 whatever the activation dtype."""
    config = bf16_model.config
    cache = HyLoCache(config)
    bf16_model(torch.randint(0, 97, (2, 9)), cache=cache, use_cache=True)
    mamba = cache.layers[config.layer_mixers.index("mamba2")]["ssm"]
    gdn = cache.layers[config.layer_mixers.index("gdn")]["recurrent"]
    assert mamba.dtype == gdn.dtype == torch.float32
    assert mamba.shape == (2, config.mamba_num_heads, config.mamba_head_dim, config.mamba_d_state)
    assert gdn.shape == (2, config.gdn_num_v_heads, config.gdn_head_k_dim, config.gdn_head_v_dim)
    # 4 heads x 16 x 16 x 4 bytes x batch 2, written out by hand for the tiny config.
    assert mamba.numel() * mamba.element_size() == 2 * 4 * 16 * 16 * 4
