"""Cross-checks of our mixers against implementations written elsewhere, with the same weights, in float32.

* MLA  vs transformers' ``DeepseekV3Attention`` (rotate-half RoPE, ``rope_interleave=False``), full sequence and
  our absorbed cached form.
* Mamba2 vs transformers' ``Mamba2Mixer`` torch path (chunked scan, and its recurrent step with a
  ``DynamicCache``), outputs and states.
* GDN  vs a layer composed, as fla's ``GatedDeltaNet`` layer does, around fla's
  ``naive_recurrent_gated_delta_rule`` (loaded by file path: fla.ops needs Triton), and transformers' Qwen3-Next
  ``torch_recurrent_gated_delta_rule`` at op level.

Tolerances are on the max abs diff divided by the reference's max abs value.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import DeepseekV3Config, DynamicCache, Mamba2Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Attention, DeepseekV3RotaryEmbedding
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
from transformers.models.qwen3_next.modeling_qwen3_next import torch_recurrent_gated_delta_rule

from hylo_model import HyLoCache
from hylo_model.layers import GatedDeltaNet, Mamba2, MultiHeadLatentAttention
from hylo_model.layers.common import AttentionMask
from tests.helpers import fla_reference, tiny_config

RTOL = 1e-5  # max |ours - reference| / max |reference|
NO_MASK = AttentionMask(None)


def _rel_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str, rtol: float = RTOL) -> None:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    assert ref.abs().max() > 1e-3, f"{what}: reference is ~0, the check would be vacuous"
    diff = _rel_diff(ours, ref)
    assert diff < rtol, f"{what}: relative max diff {diff:.3e} >= {rtol:.0e}"


def _randomize(module: torch.nn.Module, seed: int, scales: dict[str, float] | None = None) -> None:
    """Every parameter to fresh random values (norm weights around 1), so no weight is trivially the identity."""
    gen = torch.Generator().manual_seed(seed)
    scales = scales or {}
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
                param.copy_(1.0 + 0.3 * noise)
            else:
                fan_in = param.shape[-1] if param.dim() > 1 else 1
                param.copy_(noise * scales.get(name.rsplit(".", 1)[0], 1.0) / math.sqrt(fan_in))


def _copy_into(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    """Same parameter names on both sides, every one copied (strict)."""
    dst.load_state_dict(src.state_dict(), strict=True)


def _hidden(seed: int, batch: int, seq: int, hidden: int) -> torch.Tensor:
    return torch.randn(batch, seq, hidden, generator=torch.Generator().manual_seed(seed))


# ============================================================================================================ MLA
MLA_DIMS = dict(
    num_attention_heads=4, kv_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=12, v_head_dim=12,
)


def _mla_pair(q_lora_rank: int | None):
    config = tiny_config(
        "L24", mla_kv_norm=True, mla_rope_heads=1, mla_rope_pairs=None, qk_norm=False, attention_bias=False,
        q_lora_rank=q_lora_rank, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, **MLA_DIMS,
    )
    torch.manual_seed(0)
    ours = MultiHeadLatentAttention(config, 0).float().eval()
    _randomize(ours, seed=1)

    ds_config = DeepseekV3Config(
        vocab_size=97, hidden_size=config.hidden_size, intermediate_size=96, moe_intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_attention_heads, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
        topk_group=1, kv_lora_rank=config.kv_lora_rank, q_lora_rank=q_lora_rank,
        qk_rope_head_dim=config.qk_rope_head_dim, qk_nope_head_dim=config.qk_nope_head_dim,
        v_head_dim=config.v_head_dim, rms_norm_eps=config.rms_norm_eps, attention_bias=False,
        rope_interleave=False, max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
    )
    ds_config._attn_implementation = "eager"
    assert ds_config.head_dim == config.qk_rope_head_dim  # its RoPE grid spans the RoPE dims only
    torch.manual_seed(0)
    ref = DeepseekV3Attention(ds_config, layer_idx=0).float().eval()
    # DeepSeek's latent norms use the default eps 1e-6 whatever rms_norm_eps says; ours use rms_norm_eps.
    assert ref.kv_a_layernorm.variance_epsilon == ours.kv_a_layernorm.variance_epsilon
    _copy_into(ref, ours)
    assert ref.scaling == pytest.approx(ours.scale)
    return config, ours, ref, DeepseekV3RotaryEmbedding(ds_config)


def _deepseek_forward(ref, rotary, x: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    seq = x.shape[1]
    cos, sin = rotary(x, position_ids)
    causal = torch.full((seq, seq), float("-inf")).triu(1)[None, None]  # additive, for eager attention
    out, _ = ref(x, position_embeddings=(cos, sin), attention_mask=causal)
    return out


@pytest.fixture(scope="module", params=[None, 32], ids=["q_full", "q_lora32"])
def mla(request):
    return _mla_pair(request.param)


MLA_T, MLA_OFFSET = 29, 5  # positions 5..33: RoPE is tested away from position 0


@torch.no_grad()
def test_mla_rope_frequencies_match_deepseek(mla):
    _, ours, _, rotary = mla
    assert torch.equal(ours.rope.inv_freq, rotary.inv_freq)
    assert ours.rope.scaling == rotary.attention_scaling == 1.0


@torch.no_grad()
def test_mla_forward_matches_deepseek_v3(mla):
    _, ours, ref, rotary = mla
    x = _hidden(10, 2, MLA_T, ours.o_proj.out_features)
    pos = torch.arange(MLA_OFFSET, MLA_OFFSET + MLA_T)[None]
    expected = _deepseek_forward(ref, rotary, x, pos)
    _assert_close(ours(x, position_ids=pos, attention_mask=NO_MASK, cache=None), expected, "MLA forward")
    # Forcing the absorbed form without a cache must give the same (masking is then plain causal).
    _assert_close(ours(x, position_ids=pos, attention_mask=NO_MASK, cache=None, absorb=True), expected,
                  "MLA absorbed forward")


@torch.no_grad()
@pytest.mark.parametrize("step", [1, 5], ids=["decode1", "block5"])
def test_mla_absorbed_cached_step_matches_deepseek_v3(mla, step):
    config, ours, ref, rotary = mla
    x = _hidden(11, 2, MLA_T, config.hidden_size)
    pos = torch.arange(MLA_OFFSET, MLA_OFFSET + MLA_T)[None]
    expected = _deepseek_forward(ref, rotary, x, pos)[:, -step:]
    cache = HyLoCache(config)
    split = MLA_T - step
    ours(x[:, :split], position_ids=pos[:, :split], attention_mask=NO_MASK, cache=cache, absorb=False)
    got = ours(x[:, split:], position_ids=pos[:, split:], attention_mask=NO_MASK, cache=cache, absorb=True)
    assert cache.cached_length(0) == MLA_T
    _assert_close(got, expected, f"MLA absorbed cached step of {step}")


# ========================================================================================================= Mamba2
MAMBA_T = 37  # not a multiple of the chunk size (16): HF pads the last chunk, ours must agree


def _mamba_pair(n_groups: int):
    config = tiny_config(
        "M", mamba_xb_heads=None, mamba_n_groups=n_groups, mamba_num_heads=4, mamba_head_dim=16,
        mamba_d_state=16, mamba_conv_kernel=4, mamba_chunk_size=16, rms_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    ours = Mamba2(config, 0).float().eval()
    _randomize(ours, seed=2, scales={"conv1d": 1.0})
    with torch.no_grad():  # SSM parameters in their usual ranges: A in [1, 16), dt around 1e-2..1, D ~ 1
        gen = torch.Generator().manual_seed(3)
        ours.A_log.copy_(torch.empty(4).uniform_(0.0, math.log(16.0), generator=gen))
        ours.dt_bias.copy_(torch.empty(4).uniform_(-4.0, 0.5, generator=gen))
        ours.D.copy_(1.0 + 0.5 * torch.randn(4, generator=gen))

    hf_config = Mamba2Config(
        num_heads=4, head_dim=16, vocab_size=97, hidden_size=config.hidden_size, state_size=16,
        num_hidden_layers=1, layer_norm_epsilon=config.rms_norm_eps, expand=1, conv_kernel=4,
        n_groups=n_groups, use_bias=False, use_conv_bias=True, chunk_size=16,
        time_step_limit=(0.0, float("inf")),
    )
    assert hf_config.expand * hf_config.hidden_size == ours.d_inner
    ref = Mamba2Mixer(hf_config, layer_idx=0).float().eval()
    _copy_into(ref, ours)
    assert not ref.training  # the fused-kernel shortcut is only tried in training
    return config, hf_config, ours, ref


@pytest.fixture(scope="module", params=[2, 1, 4], ids=["groups2", "groups1", "groups4"])
def mamba(request):
    return _mamba_pair(request.param)


@torch.no_grad()
def test_mamba2_forward_matches_hf_mamba2_mixer(mamba):
    _, _, ours, ref = mamba
    x = _hidden(20, 2, MAMBA_T, ours.out_proj.out_features)
    _assert_close(ours(x, attention_mask=NO_MASK, cache=None), ref(x), "Mamba2 forward")


@torch.no_grad()
def test_mamba2_states_and_decode_match_hf(mamba):
    config, hf_config, ours, ref = mamba
    x = _hidden(21, 2, MAMBA_T, config.hidden_size)
    prefix, last = x[:, :-1], x[:, -1:]

    # HF: prefill (chunked scan) with a DynamicCache, then one recurrent step (selective_state_update).
    hf_cache = DynamicCache(config=hf_config)
    ref_prefix = ref(prefix, cache=hf_cache)
    hf_prefix_ssm = hf_cache.get_recurrent_state(0).clone()
    hf_prefix_conv = hf_cache.get_conv_state(0).clone()
    ref_last = ref(last, cache=hf_cache)
    hf_final_ssm = hf_cache.get_recurrent_state(0)
    ref_full = ref(x)
    # HF's own consistency, so a failure below is ours.
    _assert_close(torch.cat([ref_prefix, ref_last], 1), ref_full, "HF Mamba2 prefill + step vs its full forward",
                  rtol=1e-4)

    cache = HyLoCache(config)
    got_prefix = ours(prefix, attention_mask=NO_MASK, cache=cache)
    state = cache.state(0)
    _assert_close(got_prefix, ref_prefix, "Mamba2 prefill output")
    _assert_close(state["ssm"], hf_prefix_ssm, "Mamba2 SSM state after prefill")
    assert state["ssm"].shape == (2, 4, 16, 16)  # [B, H, P, N] as HF's
    # HF keeps the last K inputs of the convolution (the oldest is never read again); we keep K - 1.
    _assert_close(state["conv"], hf_prefix_conv[..., 1:], "Mamba2 conv state after prefill")
    got_last = ours(last, attention_mask=NO_MASK, cache=cache)
    _assert_close(got_last, ref_last, "Mamba2 decode step vs HF recurrent step")
    _assert_close(got_last, ref_full[:, -1:], "Mamba2 decode step vs HF full forward")
    _assert_close(cache.state(0)["ssm"], hf_final_ssm, "Mamba2 SSM state after decode step")


# ============================================================================================================ GDN
fla_naive_recurrent_gated_delta_rule = fla_reference("gated_delta_rule").naive_recurrent_gated_delta_rule


def _fla_l2norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@torch.no_grad()
def _fla_style_gdn(layer: GatedDeltaNet, x: torch.Tensor, eps: float, op=None):
    """fla's GatedDeltaNet layer (fla/layers/gated_deltanet.py) written out in plain torch around fla's naive
    recurrence; reads only ``layer``'s weights. Returns the output and the final state ``[B, HV, K, V]``."""
    op = op or fla_naive_recurrent_gated_delta_rule
    bsz, seq, _ = x.shape
    h, hv, dk, dv = layer.num_heads, layer.num_v_heads, layer.head_k_dim, layer.head_v_dim

    def short_conv(proj: torch.nn.Linear, conv: torch.nn.Conv1d) -> torch.Tensor:  # fla's ShortConvolution
        y = proj(x).transpose(1, 2)
        y = F.conv1d(F.pad(y, (conv.kernel_size[0] - 1, 0)), conv.weight, None, groups=y.shape[1])
        return F.silu(y).transpose(1, 2)

    q = short_conv(layer.q_proj, layer.q_conv1d).reshape(bsz, seq, h, dk)
    k = short_conv(layer.k_proj, layer.k_conv1d).reshape(bsz, seq, h, dk)
    v = short_conv(layer.v_proj, layer.v_conv1d).reshape(bsz, seq, hv, dv)
    if hv > h:  # einops repeat '... h d -> ... (h g) d'
        q, k = (t.repeat_interleave(hv // h, dim=2) for t in (q, k))
    beta = layer.b_proj(x).sigmoid()
    g = -layer.A_log.float().exp() * F.softplus(layer.a_proj(x).float() + layer.dt_bias)
    q, k = _fla_l2norm(q), _fla_l2norm(k)  # use_qk_l2norm_in_kernel=True
    o, state = op(q, k, v, beta, g, scale=dk**-0.5, output_final_state=True)
    if layer.g_proj is not None:  # FusedRMSNormGated (swish): rmsnorm(o) * w * silu(gate)
        gate = layer.g_proj(x).reshape(bsz, seq, hv, dv)
        o = _rmsnorm(o, layer.o_norm.weight, eps) * F.silu(gate)
    else:
        o = _rmsnorm(o, layer.o_norm.weight, eps)
    return layer.o_proj(o.reshape(bsz, seq, hv * dv)), state


GDN_T = 23  # crosses our chunk size (16) once, not a multiple of it


def _gdn_layer(num_heads: int, num_v_heads: int, use_gate: bool):
    config = tiny_config(
        "G", gdn_num_heads=num_heads, gdn_num_v_heads=num_v_heads, gdn_head_k_dim=16, gdn_head_v_dim=12,
        gdn_conv_kernel=4, gdn_use_gate=use_gate, gdn_chunk_size=16, rms_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    layer = GatedDeltaNet(config, 0).float().eval()
    # a/b projections larger, as tiny_model does, so beta and the decay span their ranges.
    _randomize(layer, seed=4, scales={"a_proj": 3.0, "b_proj": 3.0})
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        layer.A_log.copy_(torch.empty(num_v_heads).uniform_(-2.0, math.log(16.0), generator=gen))
        layer.dt_bias.copy_(torch.empty(num_v_heads).uniform_(-4.0, 0.5, generator=gen))
    return config, layer


GDN_CASES = [(4, 4, True), (2, 4, True), (4, 4, False)]


@pytest.fixture(scope="module", params=GDN_CASES, ids=["h4_gate", "h2_hv4_gate", "h4_nogate"])
def gdn(request):
    return _gdn_layer(*request.param)


@torch.no_grad()
def test_gdn_forward_and_state_match_fla_reference(gdn):
    config, layer = gdn
    x = _hidden(30, 2, GDN_T, config.hidden_size)
    expected, expected_state = _fla_style_gdn(layer, x, config.rms_norm_eps)
    _assert_close(layer(x, attention_mask=NO_MASK, cache=None), expected, "GDN forward")
    cache = HyLoCache(config)
    _assert_close(layer(x, attention_mask=NO_MASK, cache=cache), expected, "GDN forward with cache")
    _assert_close(cache.state(0)["recurrent"], expected_state, "GDN final recurrent state")


@torch.no_grad()
def test_gdn_decode_step_matches_fla_reference(gdn):
    config, layer = gdn
    x = _hidden(31, 2, GDN_T, config.hidden_size)
    expected, expected_state = _fla_style_gdn(layer, x, config.rms_norm_eps)
    cache = HyLoCache(config)
    layer(x[:, :-1], attention_mask=NO_MASK, cache=cache)
    got = layer(x[:, -1:], attention_mask=NO_MASK, cache=cache)
    _assert_close(got, expected[:, -1:], "GDN decode step")
    _assert_close(cache.state(0)["recurrent"], expected_state, "GDN recurrent state after decode step")


@torch.no_grad()
def test_gdn_reference_ops_agree():
    """fla's naive recurrence and Qwen3-Next's torch recurrence (with its in-kernel l2norm and grouped heads)
    give the same output and state, so the reference above does not hinge on one of them."""
    gen = torch.Generator().manual_seed(6)
    bsz, seq, h, hv, dk, dv = 2, 19, 2, 4, 16, 12
    q, k = torch.randn(bsz, seq, h, dk, generator=gen), torch.randn(bsz, seq, h, dk, generator=gen)
    v = torch.randn(bsz, seq, hv, dv, generator=gen)
    beta = torch.rand(bsz, seq, hv, generator=gen)
    g = -torch.rand(bsz, seq, hv, generator=gen) * 2
    init = torch.randn(bsz, hv, dk, dv, generator=gen)
    o_hf, s_hf = torch_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=init, output_final_state=True,
                                                  use_qk_l2norm_in_kernel=True)
    qn, kn = (_fla_l2norm(t.repeat_interleave(hv // h, dim=2)) for t in (q, k))
    o_fla, s_fla = fla_naive_recurrent_gated_delta_rule(qn, kn, v, beta, g, scale=dk**-0.5, initial_state=init,
                                                        output_final_state=True)
    _assert_close(o_hf, o_fla, "Qwen3-Next vs fla recurrence output")
    _assert_close(s_hf, s_fla, "Qwen3-Next vs fla recurrence state")


@torch.no_grad()
def test_gdn_op_matches_qwen3_next_recurrence():
    """Our gated_delta_rule op (chunked and recurrent paths) against Qwen3-Next's at op level, with a state."""
    from hylo_model.ops.gated_delta import gated_delta_rule

    gen = torch.Generator().manual_seed(7)
    bsz, h, hv, dk, dv = 2, 2, 4, 16, 12
    init = torch.randn(bsz, hv, dk, dv, generator=gen)
    for seq in (1, 5, 37):  # recurrent path for short inputs, chunked (one partial chunk) for 37
        q, k = torch.randn(bsz, seq, h, dk, generator=gen), torch.randn(bsz, seq, h, dk, generator=gen)
        v = torch.randn(bsz, seq, hv, dv, generator=gen)
        beta = torch.rand(bsz, seq, hv, generator=gen)
        g = -torch.rand(bsz, seq, hv, generator=gen) * 2
        o_ref, s_ref = torch_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=init,
                                                        output_final_state=True, use_qk_l2norm_in_kernel=True)
        o, s = gated_delta_rule(q, k, v, g, beta, initial_state=init, output_final_state=True,
                                use_qk_l2norm=True, chunk_size=16)
        _assert_close(o, o_ref, f"gated_delta_rule output, T={seq}")
        _assert_close(s, s_ref, f"gated_delta_rule state, T={seq}")
