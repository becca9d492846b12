"""Pure-PyTorch Mamba2 SSD: the chunked (state-space dual) form for prefill/training and the recurrent form
for decode. Both run on any device, compute in float32 and return ``y`` in ``x.dtype``.

Shapes used throughout (``b`` batch, ``c`` chunk, ``l``/``s`` position inside a chunk, ``h`` head,
``p`` head dim, ``n`` state dim): ``x [b, T, h, p]``, ``dt [b, T, h]``, ``A [h]``, ``B``/``C [b, T, g, n]``,
state ``[b, h, p, n]`` (mamba_ssm's ``ssm_state`` layout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expand_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """``[b, T, g, n] -> [b, T, nheads, n]``: head ``h`` takes group ``h // (nheads // g)``."""
    groups = t.shape[2]
    if nheads % groups:
        raise ValueError(f"the number of heads ({nheads}) must be a multiple of the number of groups ({groups})")
    return t if groups == nheads else t.repeat_interleave(nheads // groups, dim=2)


def requires_grad(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd will record an op on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def segsum(a: torch.Tensor) -> torch.Tensor:
    """Segment sums ``[..., L] -> [..., L, L]``: ``out[..., i, j] = a[j+1] + ... + a[i]`` for ``i >= j``
    (0 on the diagonal) and ``-inf`` above it, so ``exp(out)`` is the causal decay matrix.

    Built as a cumulative sum of a masked copy rather than as ``cumsum[i] - cumsum[j]``: the difference of two
    large cumulative sums loses precision, and ``exp`` of the (positive) entries above the diagonal could
    overflow and poison gradients with ``inf * 0``.
    """
    length = a.shape[-1]
    strict = torch.ones(length, length, dtype=torch.bool, device=a.device).tril(-1)
    # Row i of the expanded matrix holds a[i] in every column; keeping i > j and summing down the rows
    # leaves a[j+1] + ... + a[i] in column j.
    rows = a[..., :, None].expand(*a.shape, length).masked_fill(~strict, 0.0)
    sums = rows.cumsum(dim=-2)
    causal = torch.ones(length, length, dtype=torch.bool, device=a.device).tril()
    return sums.masked_fill(~causal, float("-inf"))


def check_shapes(x, dt, A, B, C, D, initial_state) -> None:
    bsz, seqlen, nheads, headdim = x.shape
    if dt.shape != (bsz, seqlen, nheads):
        raise ValueError(f"dt must be [Bsz, T, H] = {(bsz, seqlen, nheads)}, got {tuple(dt.shape)}")
    if A.shape != (nheads,):
        raise ValueError(f"A must be [H] = {(nheads,)}, got {tuple(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 4 or t.shape[:2] != (bsz, seqlen) or nheads % t.shape[2]:
            raise ValueError(f"{name} must be [Bsz, T, G, N] with G dividing H={nheads}, got {tuple(t.shape)}")
    if B.shape[-1] != C.shape[-1]:
        raise ValueError(f"B and C must share the state size N, got {B.shape[-1]} and {C.shape[-1]}")
    if D is not None and D.shape != (nheads,):
        raise ValueError(f"D must be [H] = {(nheads,)}, got {tuple(D.shape)}")
    if initial_state is not None and initial_state.shape != (bsz, nheads, headdim, B.shape[-1]):
        raise ValueError(
            f"initial_state must be [Bsz, H, P, N] = {(bsz, nheads, headdim, B.shape[-1])}, "
            f"got {tuple(initial_state.shape)}"
        )


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked SSD (Mamba2's ``ssd_minimal_discrete`` algorithm): quadratic attention-like form inside each
    chunk, the linear recurrence between chunks.

    Args:
        x: ``[Bsz, T, H, P]``; dt: ``[Bsz, T, H]`` (>= 0); A: ``[H]`` (< 0); B: ``[Bsz, T, GB, N]``;
        C: ``[Bsz, T, GC, N]``; D: ``[H]`` or None; initial_state: ``[Bsz, H, P, N]`` or None.
        chunk_size: tokens per chunk; any ``T`` works (the tail is zero-padded, which leaves the state alone
            because a zero ``dt`` means no decay and no input).

    Returns:
        ``y [Bsz, T, H, P]`` in ``x.dtype`` and the final state ``[Bsz, H, P, N]`` in float32 (or None).
    """
    check_shapes(x, dt, A, B, C, D, initial_state)
    bsz, seqlen, nheads, headdim = x.shape
    dstate = B.shape[-1]
    # A sequence shorter than a chunk is a single chunk of its own length: no padding work.
    length = max(1, min(chunk_size, seqlen))
    pad = (-seqlen) % length
    nchunks = (seqlen + pad) // length

    xf, dtf = x.float(), dt.float()
    Bh = expand_groups(B.float(), nheads)
    Ch = expand_groups(C.float(), nheads)
    xdt = xf * dtf[..., None]
    dA = dtf * A.float()
    if pad:
        xdt = F.pad(xdt, (0, 0, 0, 0, 0, pad))
        dA = F.pad(dA, (0, 0, 0, pad))
        Bh = F.pad(Bh, (0, 0, 0, 0, 0, pad))
        Ch = F.pad(Ch, (0, 0, 0, 0, 0, pad))
    xdt = xdt.reshape(bsz, nchunks, length, nheads, headdim)
    Bc = Bh.reshape(bsz, nchunks, length, nheads, dstate)
    Cc = Ch.reshape(bsz, nchunks, length, nheads, dstate)
    dA = dA.reshape(bsz, nchunks, length, nheads).permute(0, 3, 1, 2)  # [b, h, c, l]
    dA_cum = dA.cumsum(dim=-1)

    # 1. Inside each chunk: y_l = sum_{s <= l} (C_l . B_s) exp(dA_{s+1} + ... + dA_l) dt_s x_s.
    decay = torch.exp(segsum(dA))  # [b, h, c, l, s]
    scores = torch.einsum("bclhn,bcshn->bhcls", Cc, Bc) * decay
    y = torch.einsum("bhcls,bcshp->bclhp", scores, xdt)

    # 2. State each chunk produces on its own (starting from zero), decayed to the chunk's end.
    decay_to_end = torch.exp(dA_cum[..., -1:] - dA_cum)  # [b, h, c, l]
    chunk_states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bc, decay_to_end, xdt)

    # 3. Between chunks: the state entering chunk z sums every earlier chunk's state (and the initial one),
    #    decayed by the chunks in between.
    if initial_state is None:
        start = chunk_states.new_zeros(bsz, 1, nheads, headdim, dstate)
    else:
        start = initial_state.float()[:, None]
    chunk_states = torch.cat([start, chunk_states], dim=1)  # [b, c + 1, h, p, n]
    chunk_decay = torch.exp(segsum(F.pad(dA_cum[..., -1], (1, 0))))  # [b, h, c + 1, c + 1]
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, chunk_states)
    entering, final_state = states[:, :-1], states[:, -1]

    # 4. Contribution of the state entering each chunk: C_l . (decay up to l) * state.
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cc, entering, torch.exp(dA_cum))
    y = y.reshape(bsz, nchunks * length, nheads, headdim)[:, :seqlen]
    if D is not None:
        y = y + D.float()[:, None] * xf
    return y.to(x.dtype), (final_state if output_final_state else None)


def ssd_recurrent(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token-by-token SSD for decode (cheap for ``T == 1``; a Python loop over ``T`` otherwise).

    Same arguments and returns as :func:`ssd_chunked`; computes ``S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T``,
    ``y_t = S_t C_t + D x_t`` in float32.
    """
    check_shapes(x, dt, A, B, C, D, initial_state)
    bsz, seqlen, nheads, headdim = x.shape
    xf, dtf = x.float(), dt.float()
    Bh = expand_groups(B.float(), nheads)
    Ch = expand_groups(C.float(), nheads)
    decay = torch.exp(dtf * A.float())  # [b, T, h]
    xdt = xf * dtf[..., None]
    if initial_state is None:
        state = xf.new_zeros(bsz, nheads, headdim, B.shape[-1])
    else:
        state = initial_state.float()
    ys = []
    for t in range(seqlen):
        state = state * decay[:, t, :, None, None] + xdt[:, t, :, :, None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(bsz, 0, nheads, headdim)
    if D is not None:
        y = y + D.float()[:, None] * xf
    return y.to(x.dtype), (state if output_final_state else None)
