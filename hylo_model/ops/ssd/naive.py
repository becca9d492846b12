"""Per-timestep float32 reference for Mamba2's SSD (state-space duality) scan.

Slow on purpose: one Python step per token, written as the recurrence itself, so every faster path can be
checked against it.
"""

from __future__ import annotations

import torch


def naive_ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the SSD recurrence one timestep at a time in float32.

    For every batch row and head ``h`` (state ``S`` of shape ``[P, N]``)::

        S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * outer(x_t, B_t)
        y_t = S_t @ C_t + D_h * x_t

    Args:
        x: ``[Bsz, T, H, P]`` inputs.
        dt: ``[Bsz, T, H]`` step sizes (already softplus'ed, >= 0).
        A: ``[H]`` negative decay rates.
        B: ``[Bsz, T, GB, N]`` input projections; head ``h`` reads group ``h // (H // GB)``.
        C: ``[Bsz, T, GC, N]`` output projections; head ``h`` reads group ``h // (H // GC)``.
        D: ``[H]`` skip weights, or None.
        initial_state: ``[Bsz, H, P, N]`` state before the first token, or None for zeros.
        output_final_state: also return the state after the last token.

    Returns:
        ``y`` of shape ``[Bsz, T, H, P]`` in ``x.dtype`` and the final state ``[Bsz, H, P, N]`` in float32
        (None unless ``output_final_state``).
    """
    bsz, seqlen, nheads, headdim = x.shape
    dstate = B.shape[-1]
    # Head h uses group h // (H // G): repeat each group H // G times, like mamba_ssm's `repeat`.
    Bh = B.float().repeat_interleave(nheads // B.shape[2], dim=2)
    Ch = C.float().repeat_interleave(nheads // C.shape[2], dim=2)
    xf, dtf, Af = x.float(), dt.float(), A.float()

    if initial_state is None:
        state = x.new_zeros(bsz, nheads, headdim, dstate, dtype=torch.float32)
    else:
        state = initial_state.float()
    ys = []
    for t in range(seqlen):
        decay = torch.exp(dtf[:, t] * Af)  # [Bsz, H]
        inp = (dtf[:, t, :, None] * xf[:, t])[..., None] * Bh[:, t, :, None, :]  # [Bsz, H, P, N]
        state = decay[..., None, None] * state + inp
        y = (state * Ch[:, t, :, None, :]).sum(-1)  # [Bsz, H, P]
        if D is not None:
            y = y + D.float()[:, None] * xf[:, t]
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(bsz, 0, nheads, headdim)
    return y.to(x.dtype), (state if output_final_state else None)
