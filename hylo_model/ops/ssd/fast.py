"""CUDA kernels for SSD: fla's simple-GLA Triton kernels (required fast path) and mamba_ssm's fused SSD kernel
(optional). Both libraries are imported lazily, inside the calls, so this module imports on any machine.

SSD is simple GLA with a per-head scalar log-decay: with ``q = C``, ``k = B``, ``v = dt * x``, ``g = dt * A``
and ``scale = 1``, fla's recurrence ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t`` is SSD's with the
state stored transposed (fla keeps ``[K, V] = [N, P]``, SSD/mamba_ssm keep ``[P, N]``).

fla 0.6 refuses the backward of ``chunk_simple_gla`` on Hopper GPUs with 3.4 <= Triton < 3.7.1: its gated
``chunk_bwd_dqkwg`` kernel is miscompiled there (fla issue #640) and raises unless TileLang takes over, which it
does not for simple GLA's float32 states. ``fused_chunk_simple_gla`` avoids that kernel but gets the decay
gradient from a reverse cumulative sum over the whole sequence of bf16-rounded terms that nearly cancel: on an
H200 at T=4096 its ``dA`` was 7e-2 to 1.0 off in relative norm (every other gradient within 1e-2). So where the
chunk backward is blocked, the dispatcher in ``__init__`` sends calls that need gradients to the torch path.
"""

from __future__ import annotations

import torch

from .. import backend
from .chunk import expand_groups


def chunk_backward_blocked(device: torch.device) -> bool:
    """Whether fla's ``chunk_simple_gla`` backward would raise on ``device`` (fla issue #640; tilelang does not
    replace the kernel for simple GLA)."""
    return backend.fla_gated_backward_broken(device)


def simple_gla_inputs(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Map SSD inputs onto fla's simple-GLA arguments.

    Returns ``q [b, T, H, N]``, ``k [b, T, H, N]``, ``v [b, T, H, P]`` (all in ``x.dtype``, since the Triton
    matmuls need one input dtype), ``g [b, T, H]`` in float32 (the log decay is cumulated over a chunk, where
    bf16 would lose it) and the initial state as ``[b, H, N, P]`` float32 (or None).
    """
    nheads = x.shape[2]
    q = expand_groups(C, nheads).to(x.dtype)
    k = expand_groups(B, nheads).to(x.dtype)
    v = _rounded(torch.mul, x, dt.float()[..., None], like=x)
    g = dt.float() * A.float()
    h0 = None if initial_state is None else initial_state.float().transpose(-1, -2).contiguous()
    return q, k, v, g, h0


def ssd_fla(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    recurrent: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SSD through fla's simple-GLA kernels: ``chunk_simple_gla`` (differentiable, fla's fixed chunk of 64; its
    backward raises where :func:`chunk_backward_blocked`) or, with ``recurrent`` (decode: a few tokens, no
    gradients), ``fused_recurrent_simple_gla`` fed float32 ``q``/``k``/``v`` (it has no matmuls that need 16-bit
    inputs, and an unrounded ``dt * x`` keeps the carried state closer to the torch path).

    Shapes as :func:`hylo_model.ops.ssd.ssd`; returns ``y`` in ``x.dtype`` and the final state
    ``[b, H, P, N]`` float32 (or None).
    """
    from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

    q, k, v, g, h0 = simple_gla_inputs(x.float() if recurrent else x, dt, A, B, C, initial_state)
    kernel = fused_recurrent_simple_gla if recurrent else chunk_simple_gla
    o, ht = kernel(q, k, v, g=g, scale=1.0, initial_state=h0, output_final_state=output_final_state)
    y = o.to(x.dtype) if D is None else _rounded(torch.addcmul, o, x, D.float()[:, None], like=x)
    final_state = None if ht is None else ht.float().transpose(-1, -2).contiguous()
    return y, final_state


def _rounded(op, *args: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``op(*args)`` computed in float32 (the float32 argument promotes the others inside the kernel) and rounded
    once to ``like.dtype``: one elementwise kernel without autograd (``out=``), two with it. Both equal upcasting
    every input first, to the bit, without writing float32 copies of ``[b, T, H, P]`` tensors."""
    if torch.is_grad_enabled() and any(a.requires_grad for a in args):
        return op(*args).to(like.dtype)
    return op(*args, out=torch.empty_like(like))


def ssd_mamba(
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
    """SSD through mamba_ssm's fused Triton kernel ``mamba_chunk_scan_combined``.

    It needs ``B`` and ``C`` to have the same number of groups; its state layout ``[b, H, P, N]`` is ours.
    Only keyword arguments present in every mamba_ssm 2.x release are passed (``D``, ``initial_states``,
    ``return_final_states``); ``dt`` is used as given (no bias, no softplus).
    """
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    out = mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size,
        D=D, initial_states=initial_state, return_final_states=output_final_state,
    )
    if not output_final_state:
        return out, None
    y, final_state = out
    return y, final_state.float()
