"""Per-timestep float32 reference for the causal depthwise short convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    conv_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Slide a window of the last ``W`` inputs over time, one step per token, in float32.

    ``y[b, t, c] = act(bias[c] + sum_w weight[c, w] * u[b, t - (W - 1) + w, c])`` where ``u`` is the input
    preceded by the ``W - 1`` inputs of ``conv_state`` (zeros when None).

    Args:
        x: ``[Bsz, T, C]`` inputs.
        weight: ``[C, W]`` per-channel taps (the oldest input meets ``weight[:, 0]``).
        bias: ``[C]`` or None.
        activation: None or ``"silu"``.
        conv_state: ``[Bsz, C, W - 1]`` inputs preceding this call (oldest first), or None for zeros.
        output_final_state: also return the last ``W - 1`` inputs.

    Returns:
        ``y [Bsz, T, C]`` in ``x.dtype`` and the new state ``[Bsz, C, W - 1]`` in ``x.dtype`` (or None).
    """
    bsz, seqlen, channels = x.shape
    width = weight.shape[1]
    window = x.new_zeros(bsz, channels, width, dtype=torch.float32)
    if conv_state is not None:
        window[..., 1:] = conv_state.float()
    w = weight.float()
    ys = []
    for t in range(seqlen):
        window = torch.cat([window[..., 1:], x[:, t, :, None].float()], dim=-1)
        y = (window * w).sum(-1)
        if bias is not None:
            y = y + bias.float()
        if activation == "silu":
            y = F.silu(y)
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(bsz, 0, channels, dtype=torch.float32)
    state = window[..., 1:].to(x.dtype) if output_final_state else None
    return y.to(x.dtype), state
