"""One decode step of the causal depthwise convolution: one new token per sequence against the ``W - 1`` kept inputs.

:func:`causal_conv1d` serves this case too, but through fla's kernel it pads the state to fla's ``W``-wide layout
and copies the new state back (four kernels per call), and through PyTorch it runs the general path. A decode step
needs one pass: read the state and the token, write the output and the shifted state. On CUDA that is one Triton
kernel (``fast_step.py``), which may write the new state over the old one (what a static decode step, replayed in a
CUDA graph, needs: the state keeps its address).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backend

__all__ = ["conv_step", "conv_step_group", "conv_step_torch"]


def conv_step_torch(
    x: torch.Tensor,
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
    out_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PyTorch form, float32 inside: the same operations as :func:`~hylo_model.ops.conv.causal_conv1d_torch`
    for one token, so the two agree to the bit. Shapes as :func:`conv_step`."""
    window = torch.cat([state.float(), x.float().transpose(1, 2)], dim=-1)  # [B, C, W]
    y = (window * weight.float()).sum(-1, keepdim=True)
    if bias is not None:
        y = y + bias.float()[:, None]
    if activation == "silu":
        y = F.silu(y)
    new_state = window[..., 1:].to(x.dtype).contiguous()  # as causal_conv1d's: the Triton step needs it
    if out_state is not None:
        out_state.copy_(new_state)
        new_state = out_state
    return y.transpose(1, 2).to(x.dtype), new_state


def _check(x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor, activation: str | None) -> None:
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    expected = (x.shape[0], x.shape[-1], weight.shape[1] - 1)
    if x.dim() != 3 or x.shape[1] != 1 or tuple(state.shape) != expected:
        raise ValueError(f"conv_step takes x [B, 1, C] and state [B, C, W - 1] = {expected}, got "
                         f"{tuple(x.shape)} and {tuple(state.shape)}")


def conv_step(
    x: torch.Tensor,
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    activation: str | None = "silu",
    in_place: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = act(bias + sum_w weight[:, w] * u_w)`` over the window ``u`` = the kept inputs then the new token.

    Args:
        x: ``[B, 1, C]``, any strides (a slice of a packed projection is fine).
        state: ``[B, C, W - 1]``, the last ``W - 1`` inputs, oldest first.
        weight: ``[C, W]``; bias: ``[C]`` or None; activation: None or ``"silu"``.
        in_place: write the new state into ``state`` (returned as the new state) instead of a new tensor.

    Returns:
        ``y [B, 1, C]`` in ``x.dtype`` and the new state ``[B, C, W - 1]`` (the last ``W - 1`` inputs).
    """
    _check(x, state, weight, activation)
    out_state = state if in_place else None
    if backend.use_fast("conv_step", x, "triton"):
        if state.is_contiguous() and weight.is_contiguous():
            from .fast_step import conv_step_triton

            return conv_step_triton(x, state, weight, bias, activation, out_state)
        backend.fallback("conv_step", "the state or the weight is not contiguous")
    return conv_step_torch(x, state, weight, bias, activation, out_state)


def conv_step_group(
    xs: list[torch.Tensor],
    states: list[torch.Tensor],
    weights: list[torch.Tensor],
    *,
    activation: str | None = "silu",
    in_place: bool = False,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`conv_step` (no bias) on one to three tensors at once: GDN's q, k and v steps as one kernel on CUDA
    instead of three. The same results as calling :func:`conv_step` on each, to the bit (each channel's arithmetic
    is the same); returns ``(y, new_state)`` per tensor."""
    if not 1 <= len(xs) == len(states) == len(weights) <= 3:
        raise ValueError(f"conv_step_group takes one to three tensors, states and weights, got {len(xs)}, "
                         f"{len(states)} and {len(weights)}")
    for x, state, weight in zip(xs, states, weights):
        _check(x, state, weight, activation)
    # One launch takes one dtype per role, one window width and one batch; each state and weight contiguous.
    uniform = all(len({t.dtype for t in group}) == 1 for group in (xs, states, weights)) and len(
        {w.shape[1] for w in weights}) == 1 and len({x.shape[0] for x in xs}) == 1
    if uniform and all(t.is_contiguous() for t in (*states, *weights)) and backend.use_fast(
            "conv_step", xs[0], "triton"):
        from .fast_step import conv_step_group_triton

        return conv_step_group_triton(xs, states, weights, activation, in_place)
    return [conv_step(x, s, w, activation=activation, in_place=in_place) for x, s, w in zip(xs, states, weights)]
