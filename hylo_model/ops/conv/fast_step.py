"""Triton kernels for :mod:`hylo_model.ops.conv.step`: one program per (sequence, block of channels) reads the
``W - 1`` kept inputs and the new token, writes the output and the shifted state (in place or not); the group
kernel does so for up to three tensors in one launch (:func:`~hylo_model.ops.conv.step.conv_step_group`)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_CHANNELS = 256


@triton.jit
def _step(x, stride_xb, stride_xc, state, new_state, weight, bias, y, C, pid_c, pid_b, KEEP: tl.constexpr,
          HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK: tl.constexpr):
    """One (sequence, block of channels) of one tensor: the body both kernels share."""
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


@triton.jit
def _conv_step_kernel(x, stride_xb, stride_xc, state, new_state, weight, bias, y, C, KEEP: tl.constexpr,
                      HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK: tl.constexpr):
    _step(x, stride_xb, stride_xc, state, new_state, weight, bias, y, C, tl.program_id(0),
          tl.program_id(1).to(tl.int64), KEEP, HAS_BIAS, SILU, BLOCK)


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


# Arguments picked per tensor at run time must keep one type across the branches: no specialisation of the
# integers to constants.
@triton.jit(do_not_specialize=["stride_b0", "stride_b1", "stride_b2", "stride_c0", "stride_c1", "stride_c2", "C0",
                               "C1", "C2"])
def _conv_step_group_kernel(x0, x1, x2, stride_b0, stride_b1, stride_b2, stride_c0, stride_c1, stride_c2,
                            state0, state1, state2, new0, new1, new2, weight0, weight1, weight2, y0, y1, y2,
                            C0, C1, C2, KEEP: tl.constexpr, SILU: tl.constexpr, BLOCK: tl.constexpr):
    """:func:`_conv_step_kernel` (no bias) over up to three tensors in one launch: ``program_id(2)`` picks the
    tensor (GDN's q, k and v), whose pointers, strides and width are chosen here."""
    tensor = tl.program_id(2)
    if tensor == 0:
        x = x0
        stride_xb = stride_b0
        stride_xc = stride_c0
        state = state0
        new_state = new0
        weight = weight0
        y = y0
        C = C0
    elif tensor == 1:
        x = x1
        stride_xb = stride_b1
        stride_xc = stride_c1
        state = state1
        new_state = new1
        weight = weight1
        y = y1
        C = C1
    else:
        x = x2
        stride_xb = stride_b2
        stride_xc = stride_c2
        state = state2
        new_state = new2
        weight = weight2
        y = y2
        C = C2
    _step(x, stride_xb, stride_xc, state, new_state, weight, weight, y, C, tl.program_id(0),
          tl.program_id(1).to(tl.int64), KEEP, False, SILU, BLOCK)


def conv_step_group_triton(
    xs: list[torch.Tensor],
    states: list[torch.Tensor],
    weights: list[torch.Tensor],
    activation: str | None,
    in_place: bool,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`conv_step_triton` without bias for one to three tensors (one dtype each of x, state, weight and
    output across them) in one launch; returns ``(y, new_state)`` per tensor."""
    count = len(xs)
    batch = xs[0].shape[0]
    keep = weights[0].shape[1] - 1
    widths = [x.shape[2] for x in xs]
    ys = [torch.empty(batch, 1, c, dtype=x.dtype, device=x.device) for x, c in zip(xs, widths)]
    news = states if in_place else [torch.empty_like(s) for s in states]

    def three(items):  # pad to the kernel's three slots; unused slots are never read (their programs don't exist)
        return list(items) + [items[0]] * (3 - count)

    grid = (triton.cdiv(max(widths), BLOCK_CHANNELS), batch, count)
    _conv_step_group_kernel[grid](
        *three(xs), *three([x.stride(0) for x in xs]), *three([x.stride(2) for x in xs]), *three(states),
        *three(news), *three(weights), *three(ys), *three(widths), KEEP=keep, SILU=activation == "silu",
        BLOCK=BLOCK_CHANNELS,
    )
    return list(zip(ys, news))
