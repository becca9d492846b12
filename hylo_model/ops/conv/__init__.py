"""Causal depthwise short convolution (Mamba2's / GDN's ``conv1d`` over ``x``, ``B``, ``C``) with a decode state."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backend
from .fast import causal_conv1d_fla
from .naive import naive_causal_conv1d
from .step import conv_step, conv_step_group, conv_step_torch

__all__ = ["causal_conv1d", "causal_conv1d_torch", "conv_step", "conv_step_group", "conv_step_torch",
           "naive_causal_conv1d"]


def _check(x, weight, bias, activation, conv_state) -> None:
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"expected x [Bsz, T, C] and weight [C, W], got {tuple(x.shape)} and {tuple(weight.shape)}")
    if bias is not None and bias.shape != (x.shape[-1],):
        raise ValueError(f"bias must be [C] = {(x.shape[-1],)}, got {tuple(bias.shape)}")
    expected = (x.shape[0], x.shape[-1], weight.shape[1] - 1)
    if conv_state is not None and conv_state.shape != expected:
        raise ValueError(f"conv_state must be [Bsz, C, W - 1] = {expected}, got {tuple(conv_state.shape)}")


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    conv_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """PyTorch path (any device), computed in float32: the state is prepended as left padding and one
    grouped ``F.conv1d`` runs over it; a single token is a multiply-sum over the ``W``-wide window.

    Shapes as :func:`causal_conv1d`.
    """
    bsz, seqlen, channels = x.shape
    width = weight.shape[1]
    xt = x.float().transpose(1, 2)  # [Bsz, C, T]
    if conv_state is None:
        full = F.pad(xt, (width - 1, 0))
    else:
        full = torch.cat([conv_state.float(), xt], dim=-1)  # [Bsz, C, W - 1 + T]
    w = weight.float()
    b = None if bias is None else bias.float()
    if seqlen == 1:
        y = (full * w).sum(-1, keepdim=True)
        if b is not None:
            y = y + b[:, None]
    else:
        y = F.conv1d(full, w[:, None, :], b, groups=channels)
    if activation == "silu":
        y = F.silu(y)
    y = y.transpose(1, 2).to(x.dtype)
    if not output_final_state:
        return y, None
    # Sliced from the padded input, so a call shorter than W - 1 keeps the older state entries.
    return y, full[..., full.shape[-1] - (width - 1):].to(x.dtype).contiguous()


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = "silu",
    conv_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise convolution over time: ``y_t = act(bias + sum_w weight[:, w] * x_{t - W + 1 + w})``.

    Args:
        x: ``[Bsz, T, C]`` (time-major).
        weight: ``[C, W]`` (``nn.Conv1d(C, C, W, groups=C).weight.squeeze(1)``).
        bias: ``[C]`` or None.
        activation: None or ``"silu"``.
        conv_state: ``[Bsz, C, W - 1]``, the last ``W - 1`` inputs before this call (oldest first; zeros = start
            of a sequence), or None for zeros.
        output_final_state: also return the new state.

    Returns:
        ``y [Bsz, T, C]`` in ``x.dtype`` and the new state ``[Bsz, C, W - 1]`` in ``x.dtype``, contiguous (what
        :func:`conv_step`'s kernel and a CUDA graph's in-place updates need): the last ``W - 1`` inputs, older state
        entries included when ``T < W - 1`` (None unless ``output_final_state``).

    Kernel choice: on CUDA with fla importable, fla's Triton ``causal_conv1d`` (``causal_conv1d_update`` for a
    single token without gradients); otherwise :func:`causal_conv1d_torch`.
    """
    _check(x, weight, bias, activation, conv_state)
    if backend.use_fast("causal_conv1d", x, "fla.modules.causal_conv1d"):
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, weight, bias, conv_state)
        )
        decode = x.shape[1] == 1 and not needs_grad
        return causal_conv1d_fla(x, weight, bias, activation, conv_state, output_final_state, decode)
    return causal_conv1d_torch(x, weight, bias, activation, conv_state, output_final_state)
