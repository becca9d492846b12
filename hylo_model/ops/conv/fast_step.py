"""Triton kernel for :func:`hylo_model.ops.conv.step.conv_step`: one program per (sequence, block of channels)
reads the ``W - 1`` kept inputs and the new token, writes the output and the shifted state (in place or not)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_CHANNELS = 256


@triton.jit
def _conv_step_kernel(x, stride_xb, stride_xc, state, new_state, weight, bias, y, C, KEEP: tl.constexpr,
                      HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK: tl.constexpr):
    pid_c, pid_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    channel = pid_c * BLOCK + tl.arange(0, BLOCK)
    mask = channel < C
    token = tl.load(x + pid_b * stride_xb + channel * stride_xc, mask=mask, other=0)
    # Weight row c is [w_0 .. w_KEEP]; w_KEEP multiplies the new token.
    acc = token.to(tl.float32) * tl.load(weight + channel * (KEEP + 1) + KEEP, mask=mask, other=0).to(tl.float32)
    row = pid_b * C * KEEP + channel * KEEP
    for i in tl.static_range(KEEP):
        kept = tl.load(state + row + i, mask=mask, other=0)
        acc += kept.to(tl.float32) * tl.load(weight + channel * (KEEP + 1) + i, mask=mask, other=0).to(tl.float32)
        if i > 0:
            # Slot i - 1 was read at the previous iteration by this same thread, so in place is safe.
            tl.store(new_state + row + i - 1, kept, mask=mask)
    tl.store(new_state + row + KEEP - 1, token.to(new_state.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)
    if HAS_BIAS:
        acc += tl.load(bias + channel, mask=mask, other=0).to(tl.float32)
    if SILU:
        acc = acc * tl.sigmoid(acc)
    tl.store(y + pid_b * C + channel, acc.to(y.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)


def conv_step_triton(
    x: torch.Tensor,
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    out_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapes as :func:`~hylo_model.ops.conv.step.conv_step`; ``state``, ``weight`` contiguous."""
    batch, _, channels = x.shape
    keep = weight.shape[1] - 1
    y = torch.empty(batch, 1, channels, dtype=x.dtype, device=x.device)
    new_state = out_state if out_state is not None else torch.empty_like(state)
    grid = (triton.cdiv(channels, BLOCK_CHANNELS), batch)
    _conv_step_kernel[grid](
        x, x.stride(0), x.stride(2), state, new_state, weight, bias if bias is not None else weight, y, channels,
        KEEP=keep, HAS_BIAS=bias is not None, SILU=activation == "silu", BLOCK=BLOCK_CHANNELS,
    )
    return y, new_state
