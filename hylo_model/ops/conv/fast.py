"""fla's Triton causal convolution behind the `causal_conv1d` contract (``[Bsz, C, W - 1]`` state).

fla keeps ``W`` inputs per channel (``[N, D, W]``, oldest first) where we keep ``W - 1``. Its kernels never
read the oldest slot (the forward reads slots ``1..W-1`` for the tokens before the call, the decode update
shifts slots ``1..W-1`` left and appends the new token), so our state becomes fla's by putting a zero column
in front, and fla's final state becomes ours by dropping its first column.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d_fla(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None,
    conv_state: torch.Tensor | None,
    output_final_state: bool,
    decode: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run fla's ``causal_conv1d`` (differentiable), or with ``decode`` (``T == 1``, no gradients) its in-place
    ``causal_conv1d_update`` on a scratch copy of the state.

    Shapes as :func:`hylo_model.ops.conv.causal_conv1d`; ``y`` and the new state come back in ``x.dtype``.
    """
    from fla.modules.causal_conv1d import causal_conv1d, causal_conv1d_update

    bsz, _, channels = x.shape
    cache = None if conv_state is None else F.pad(conv_state.to(x.dtype), (1, 0))
    if decode:
        if cache is None:
            cache = x.new_zeros(bsz, channels, weight.shape[1])
        # The update kernel shifts the cache in place; `cache` is always our own fresh tensor here.
        y, cache = causal_conv1d_update(x=x, cache=cache, weight=weight, bias=bias, activation=activation)
        return y, (cache[..., 1:].contiguous() if output_final_state else None)
    y, final_state = causal_conv1d(
        x=x,
        weight=weight,
        bias=bias,
        initial_state=cache,
        output_final_state=output_final_state,
        activation=activation,
    )
    # Contiguous, as the contract says: the decode step's Triton kernel and a CUDA graph's in-place state updates
    # need it (a strided state sent every step of `generate` to the PyTorch step: 1,232 kernels per step on an H100).
    return y, (None if final_state is None else final_state[..., 1:].contiguous())
