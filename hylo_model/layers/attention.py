"""Full attention: the teacher's own GQA + RoPE layer (Llama, Qwen2 with q/k/v bias, Qwen3 with q/k RMSNorm)."""

from __future__ import annotations

import torch
from torch import nn

from ..cache import HyLoCache
from ..config import HyLoConfig
from .common import AttentionMask, RMSNorm, apply_rope, attention
from .packed import PackedLinears


class Attention(nn.Module):
    """Grouped-query attention with parameter names as in transformers' Llama/Qwen (``q_proj`` ... ``o_proj``,
    ``q_norm``/``k_norm``), so upcycling copies the teacher bit for bit."""

    def __init__(self, config: HyLoConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        hidden, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        self._qkv = PackedLinears([self.q_proj, self.k_proj, self.v_proj])  # one GEMM without gradients
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(
        self,
        hidden_states: torch.Tensor,
        *,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: AttentionMask,
        cache: HyLoCache | None = None,
        eager: bool = False,
        attention_weights: list[torch.Tensor] | None = None,
        **_: object,
    ) -> torch.Tensor:
        """hidden_states ``[B, T, hidden]`` -> ``[B, T, hidden]``; cos/sin ``[B, T, head_dim]``.
        ``eager`` / ``attention_weights`` (weights ``[B, H, T, S]``): see
        :func:`~hylo_model.layers.common.attention`."""
        bsz, seq_len, _ = hidden_states.shape
        q, k, v = self._qkv(hidden_states)
        q = q.view(bsz, seq_len, self.num_heads, self.head_dim)
        k = k.view(bsz, seq_len, self.num_kv_heads, self.head_dim)
        v = v.view(bsz, seq_len, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = position_embeddings
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            entry = cache.append(self.layer_idx, key=k, value=v)
            k, v = entry["key"], entry["value"]
        out = attention(q, k, v, attention_mask, self.scale, eager=eager, weights=attention_weights)
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seq_len, -1))
