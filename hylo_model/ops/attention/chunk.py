"""Causal softmax attention over blocks of queries and keys with an online softmax (flash-attention style) in
float32: peak memory is one ``[G * block, block]`` score tile per KV head (G query heads per KV head) whatever
the key length, where PyTorch's CPU SDPA materialises a ``[T, S]`` mask for a cached multi-token step. See README.md for the math.

Shapes: ``q [B, H, T, Dk]``, ``k [B, Hk, S, Dk]``, ``v [B, Hk, S, Dv]``, Hk | H; the T queries are the last T of
the S positions (lower-right causal alignment), ``valid [B, S]``.
"""

from __future__ import annotations

import torch

# Queries and keys per block: at T = S = BLOCK_SIZE the one block is what SDPA's math path would allocate.
BLOCK_SIZE = 1024


def causal_mask(
    valid: torch.Tensor | None, q_start: int, q_end: int, k_start: int, k_end: int, device: torch.device
) -> torch.Tensor:
    """``[B or 1, q_end - q_start, k_end - k_start]`` bool: which keys (absolute positions ``k_start..k_end-1``)
    the queries at positions ``q_start..q_end-1`` see. A query sees the real tokens at or before its own
    position; a padded query (``valid`` 0, its output is ignored) sees every key, so its softmax stays finite."""
    rows = torch.arange(q_start, q_end, device=device)[:, None]
    mask = (torch.arange(k_start, k_end, device=device)[None, :] <= rows)[None]
    if valid is None:
        return mask
    valid = valid.to(device)
    keys = valid[:, k_start:k_end].bool()[:, None, :]
    queries = valid[:, q_start:q_end].bool()[:, :, None]
    return mask & keys | ~queries


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor | tuple[torch.Tensor, ...],
    v: torch.Tensor,
    scale: float,
    *,
    valid: torch.Tensor | None = None,
    block_size: int = BLOCK_SIZE,
) -> torch.Tensor:
    """Causal attention ``softmax(scale * q k^T + mask) v``, one block of queries against one block of keys at
    a time, skipping key blocks after the query block's last position.

    Args:
        q: ``[B, H, T, Dk]``, the queries of the last T positions.
        k: ``[B, Hk, S, Dk]``, or a tuple of tensors ``[B, Hk, S, Dk_i]`` whose features concatenate to the key
            (MLA's latent and RoPE key): only one block of them is ever concatenated.
        v: ``[B, Hk, S, Dv]``; Hk | H and query head h reads key head h // (H / Hk), without repeating K/V.
        scale: score multiplier.
        valid: ``[B, S]`` (1 = real token) or None; see :func:`causal_mask`.
        block_size: queries and keys per block.

    Returns:
        ``[B, H, T, Dv]`` in ``q.dtype``; computed in float32.
    """
    keys = k if isinstance(k, tuple) else (k,)
    bsz, heads, q_len, _ = q.shape
    kv_heads, kv_len = v.shape[1], v.shape[2]
    groups = heads // kv_heads
    past = kv_len - q_len
    q = q.reshape(bsz, kv_heads, groups, q_len, q.shape[-1])
    outputs = []
    for start in range(0, q_len, block_size):
        end = min(start + block_size, q_len)
        rows = (q[:, :, :, start:end].float() * scale).reshape(bsz, kv_heads, groups * (end - start), -1)
        # Padded queries see every key (causal_mask), so their block reads all of them.
        padded = valid is not None and not bool(valid[:, past + start : past + end].all())
        out = _attend_rows(rows, keys, v, valid, past + start, past + end, kv_len if padded else past + end,
                           block_size)
        outputs.append(out.view(bsz, kv_heads, groups, end - start, -1))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=3)
    return out.reshape(bsz, heads, q_len, -1).to(q.dtype)


def _attend_rows(
    rows: torch.Tensor,
    keys: tuple[torch.Tensor, ...],
    v: torch.Tensor,
    valid: torch.Tensor | None,
    q_start: int,
    q_end: int,
    k_end: int,
    block_size: int,
) -> torch.Tensor:
    """One query block (absolute positions ``q_start..q_end-1``, the group's heads folded into ``rows``
    ``[B, Hk, G * Tq, Dk]``, already scaled) against keys ``0..k_end-1``: ``[B, Hk, G * Tq, Dv]`` float32."""
    bsz, kv_heads, num_rows, _ = rows.shape
    run_max = rows.new_full((bsz, kv_heads, num_rows, 1), float("-inf"))
    denom = rows.new_zeros((bsz, kv_heads, num_rows, 1))
    acc = rows.new_zeros((bsz, kv_heads, num_rows, v.shape[-1]))
    for k_start in range(0, k_end, block_size):
        k_stop = min(k_start + block_size, k_end)
        key = torch.cat([part[:, :, k_start:k_stop] for part in keys], dim=-1)
        # Blocks wholly at or before the first query need no mask unless something is padded.
        allowed = None
        if valid is not None or k_stop - 1 > q_start:
            allowed = causal_mask(valid, q_start, q_end, k_start, k_stop, rows.device)
        run_max, denom, acc = _merge_block(rows, key, v[:, :, k_start:k_stop], allowed, run_max, denom, acc)
    return acc / denom


def _merge_block(
    rows: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor | None,
    run_max: torch.Tensor,
    denom: torch.Tensor,
    acc: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One online-softmax step: fold keys ``[B, Hk, Tk, Dk]`` / values ``[B, Hk, Tk, Dv]`` (``allowed``
    ``[B or 1, Tq, Tk]`` or None) into the running max, denominator and accumulator of ``rows``. A function of
    its own so the score tile is freed on return, before the next block allocates its own."""
    bsz, kv_heads, num_rows, _ = rows.shape
    scores = rows @ key.float().transpose(-1, -2)
    if allowed is not None:
        q_len, k_len = allowed.shape[-2:]
        scores.view(bsz, kv_heads, num_rows // q_len, q_len, k_len).masked_fill_(~allowed[:, None, None],
                                                                                 float("-inf"))
    # The running max only keeps exp() in range; the result does not depend on it, so no gradient flows.
    new_max = torch.maximum(run_max, scores.detach().amax(-1, keepdim=True))
    # A row with every key so far masked has max -inf; shift it by 0 so exp gives 0 rather than NaN.
    shift = new_max.masked_fill(new_max == float("-inf"), 0.0)
    # In place, so one score tile is alive at a time (autograd-safe: neither matmul nor masked_fill nor sub
    # saves the tensor they overwrite, and exp saves its own output).
    probs = scores.sub_(shift).exp_()
    rescale = torch.exp(run_max - shift)
    denom = denom * rescale + probs.sum(-1, keepdim=True)
    acc = acc * rescale + probs @ value.float()
    return new_max, denom, acc
