"""Multi-head latent attention (DeepSeek-V2/V3) with decoupled RoPE.

Parameter names follow transformers' ``DeepseekV3Attention``: ``q_proj`` (or ``q_a_proj`` /
``q_a_layernorm`` / ``q_b_proj``), ``kv_a_proj_with_mqa``, ``kv_a_layernorm`` (optional here: upcycling recipes
often drop it), ``kv_b_proj``, ``o_proj``. Two generalisations, both off in DeepSeek's setting:

* ``mla_rope_heads`` = R > 1 keeps one RoPE key per group of H/R query heads (MHA2MLA keeps the teacher's
  per-KV-head RoPE keys); R = 1 is DeepSeek's single shared RoPE key.
* ``mla_rope_pairs`` chooses which of the model's rotary frequency pairs the RoPE part uses, so a layer upcycled
  from a teacher keeps the teacher's exact frequencies; None gives DeepSeek's fresh grid over ``qk_rope_head_dim``.

The cache keeps only the latent ``[B, S, r]`` and the RoPE'd keys ``[B, R, S, d_rope]``. Prefill expands the
latent into per-head keys/values and runs SDPA; a cached step with few new tokens uses the absorbed form
(``W_UK`` folded into the query, ``W_UV`` applied after attention), which attends straight over the latent. So
does every cached step on the key-blocked PyTorch path (CPU): re-expanding the whole cache per segment would make
a segmented prefill cost memory in the prompt length.
"""

from __future__ import annotations

import torch
from torch import nn

from ..cache import HyLoCache
from ..config import HyLoConfig
from .common import AttentionMask, RMSNorm, RopeFrequencies, apply_rope, attends_in_blocks, attention
from .packed import PackedLinears

# A cached step with at most this many new tokens attends over the latent directly (absorbed weights).
ABSORB_MAX_TOKENS = 16


def mla_rope_frequencies(config: HyLoConfig, layer_idx: int) -> RopeFrequencies:
    """The RoPE frequencies of MLA layer ``layer_idx``: the chosen pairs of the model's own frequencies, or a fresh
    grid over ``qk_rope_head_dim`` dims (DeepSeek)."""
    pairs = config.layer_rope_pairs(layer_idx)
    if pairs is None:
        return RopeFrequencies.of(config, config.qk_rope_head_dim)
    return RopeFrequencies.of(config, pairs=pairs)


class MultiHeadLatentAttention(nn.Module):
    def __init__(self, config: HyLoConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.kv_lora_rank = config.layer_kv_lora_rank(layer_idx)
        self.q_lora_rank = config.q_lora_rank
        self.rope_dim = config.qk_rope_head_dim
        self.nope_dim = config.qk_nope_head_dim
        self.v_dim = config.v_head_dim
        self.qk_dim = self.rope_dim + self.nope_dim
        self.rope_heads = config.mla_rope_heads
        self.scale = self.qk_dim**-0.5
        hidden, bias, eps = config.hidden_size, config.attention_bias, config.rms_norm_eps

        if self.q_lora_rank is None:
            self.q_proj = nn.Linear(hidden, self.num_heads * self.qk_dim, bias=bias)
        else:
            self.q_a_proj = nn.Linear(hidden, self.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(self.q_lora_rank, eps) if config.mla_kv_norm else None
            self.q_b_proj = nn.Linear(self.q_lora_rank, self.num_heads * self.qk_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, self.kv_lora_rank + self.rope_heads * self.rope_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, eps) if config.mla_kv_norm else None
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, self.num_heads * (self.nope_dim + self.v_dim), bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.v_dim, hidden, bias=False)
        if config.qk_norm:
            # Qwen3's per-head norms: on the whole query head, and on the RoPE key (all of the teacher's key
            # when every rotary pair is kept, qk_nope_head_dim == 0).
            self.q_norm = RMSNorm(self.qk_dim, eps)
            self.k_norm = RMSNorm(self.rope_dim, eps)
        else:
            self.q_norm = self.k_norm = None

        self.rope = mla_rope_frequencies(config, layer_idx)
        # The query projection (or its down-projection) and kv_a read the same input: one GEMM without gradients.
        self._inputs = PackedLinears([self.q_proj if self.q_lora_rank is None else self.q_a_proj,
                                      self.kv_a_proj_with_mqa])

    def _queries(self, q: torch.Tensor) -> torch.Tensor:
        """The output of ``q_proj`` (or ``q_a_proj``) ``[B, T, *]`` -> queries ``[B, T, H, qk_dim]``."""
        if self.q_lora_rank is not None:
            if self.q_a_layernorm is not None:
                q = self.q_a_layernorm(q)
            q = self.q_b_proj(q)
        q = q.view(*q.shape[:2], self.num_heads, self.qk_dim)
        return self.q_norm(q) if self.q_norm is not None else q

    def forward(
        self,
        hidden_states: torch.Tensor,
        *,
        position_ids: torch.Tensor,
        attention_mask: AttentionMask,
        cache: HyLoCache | None = None,
        absorb: bool | None = None,
        eager: bool = False,
        attention_weights: list[torch.Tensor] | None = None,
        **_: object,
    ) -> torch.Tensor:
        """hidden_states ``[B, T, hidden]`` -> ``[B, T, hidden]``; position_ids ``[B|1, T]``.
        ``eager`` / ``attention_weights``: see :func:`~hylo_model.layers.common.attention` (the weights are
        ``[B, H, T, S]`` in either form).
        ``absorb`` forces (or forbids) the absorbed-weight form; by default a cached step uses it when it is
        short, when the latent is small enough that it costs no more than re-expanding the cache, or when
        attention runs key-blocked (memory independent of the cache length)."""
        bsz, seq_len, _ = hidden_states.shape
        q, kv_a = self._inputs(hidden_states)
        q = self._queries(q)
        q_nope, q_pe = q.split([self.nope_dim, self.rope_dim], dim=-1)

        latent, k_pe = kv_a.split([self.kv_lora_rank, self.rope_heads * self.rope_dim], dim=-1)
        if self.kv_a_layernorm is not None:
            latent = self.kv_a_layernorm(latent)
        k_pe = k_pe.view(bsz, seq_len, self.rope_heads, self.rope_dim)
        if self.k_norm is not None:
            k_pe = self.k_norm(k_pe)

        cos, sin = self.rope.cos_sin(position_ids, hidden_states.dtype)
        q_pe = apply_rope(q_pe.transpose(1, 2), cos, sin)
        k_pe = apply_rope(k_pe.transpose(1, 2), cos, sin)
        past = cache.cached_length(self.layer_idx) if cache is not None else 0
        if self.rope_heads == 1:
            # One tensor [B, 1, S, r + d_rope]: the absorbed form's key, and (first r dims) its value.
            latent_pe = torch.cat([latent.unsqueeze(1), k_pe], dim=-1)
            if cache is not None:
                latent_pe = cache.append(self.layer_idx, latent_pe=latent_pe)["latent_pe"]
            latent, k_pe = latent_pe[:, 0, :, : self.kv_lora_rank], latent_pe[..., self.kv_lora_rank :]
        else:
            latent_pe = None
            if cache is not None:
                entry = cache.append(self.layer_idx, latent=latent, k_pe=k_pe)
                latent, k_pe = entry["latent"], entry["k_pe"]
        if absorb is None:
            absorb = past > 0 and (seq_len <= ABSORB_MAX_TOKENS or self._absorbed_is_cheaper()
                                   or attends_in_blocks(q_pe, latent.shape[1]))

        q_nope = q_nope.transpose(1, 2)
        how = {"eager": eager, "weights": attention_weights}
        if absorb:
            out = self._attend_absorbed(q_nope, q_pe, latent, k_pe, latent_pe, attention_mask, **how)
        else:
            out = self._attend_expanded(q_nope, q_pe, latent, k_pe, attention_mask, **how)
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seq_len, self.num_heads * self.v_dim))

    def _absorbed_is_cheaper(self) -> bool:
        """Per query-key pair the absorbed form does 2r + d_rope multiply-adds, the expanded one qk_dim + v_dim
        (and it re-expands every cached token): with small latents (upcycled ranks) absorbed wins at any length."""
        return 2 * self.kv_lora_rank + self.rope_dim <= self.qk_dim + self.v_dim

    def _attend_expanded(self, q_nope, q_pe, latent, k_pe, mask: AttentionMask, **how) -> torch.Tensor:
        """Per-head keys/values from the latent, then SDPA. q_nope ``[B, H, T, dn]``, q_pe ``[B, H, T, dr]``,
        latent ``[B, S, r]``, k_pe ``[B, R, S, dr]`` -> ``[B, H, T, dv]``."""
        bsz, kv_len = latent.shape[:2]
        kv = self.kv_b_proj(latent).view(bsz, kv_len, self.num_heads, self.nope_dim + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        k_pe = k_pe.repeat_interleave(self.num_heads // self.rope_heads, dim=1)
        q = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe], dim=-1)
        return attention(q, k, v, mask, self.scale, **how)

    def _attend_absorbed(self, q_nope, q_pe, latent, k_pe, latent_pe, mask: AttentionMask, **how) -> torch.Tensor:
        """Attention straight over the cached latent: score = (W_UK^T q_nope)·c + q_pe·k_pe, output =
        W_UV (Σ p c) + b_v. The key bias of kv_b_proj only shifts every score of a query by the same amount,
        so softmax removes it exactly; the value bias passes through because the weights sum to one.
        With one RoPE key, the cached ``latent_pe`` serves as both key and value (its extra d_rope output dims are
        dropped), so no per-step copy of the cache is made; with several, the latent and the RoPE keys go to
        :func:`sdpa` as a tuple of key parts, concatenated there per key block (or once, for the CUDA kernels)."""
        bsz, kv_len, rank = latent.shape
        weight = self.kv_b_proj.weight.view(self.num_heads, self.nope_dim + self.v_dim, rank)
        w_uk, w_uv = weight.split([self.nope_dim, self.v_dim], dim=1)
        q_latent = torch.einsum("bhtd,hdr->bhtr", q_nope, w_uk)
        q = torch.cat([q_latent, q_pe], dim=-1)
        if latent_pe is not None:
            context = attention(q, latent_pe, latent_pe, mask, self.scale, **how)[..., :rank]
        else:
            latent = latent.unsqueeze(1).expand(bsz, self.rope_heads, kv_len, rank)
            context = attention(q, (latent, k_pe), latent, mask, self.scale, **how)
        out = torch.einsum("bhtr,hvr->bhtv", context, w_uv)
        if self.kv_b_proj.bias is not None:
            v_bias = self.kv_b_proj.bias.view(self.num_heads, self.nope_dim + self.v_dim)[:, self.nope_dim :]
            out = out + v_bias[None, :, None, :]
        return out
