"""Float32 reference for causal softmax attention: the whole ``[T, S]`` score matrix at once."""

from __future__ import annotations

import torch

from .chunk import causal_mask


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, *, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``softmax(scale * q k^T + mask) v`` with the lower-right causal mask, in float32.

    Args:
        q: ``[B, H, T, Dk]``, the last T of the S positions.
        k: ``[B, Hk, S, Dk]``; v: ``[B, Hk, S, Dv]``, Hk | H (query head h reads key head h // (H / Hk)).
        scale: score multiplier (usually ``Dk ** -0.5``).
        valid: ``[B, S]`` (1 = real token) or None; see :func:`causal_mask` for padded positions.

    Returns:
        ``[B, H, T, Dv]`` in ``q.dtype``.
    """
    groups = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(groups, dim=1)
    v = v.float().repeat_interleave(groups, dim=1)
    kv_len, q_len = k.shape[2], q.shape[2]
    scores = scale * q.float() @ k.transpose(-1, -2)
    allowed = causal_mask(valid, kv_len - q_len, kv_len, 0, kv_len, q.device)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    return (scores.softmax(-1) @ v).to(q.dtype)
