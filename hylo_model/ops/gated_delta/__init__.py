"""Gated DeltaNet op (the gated delta rule), with fla's Triton kernels on CUDA and a pure-PyTorch path elsewhere.

See README.md in this folder for the math and the kernel choice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hylo_model.ops import backend
from hylo_model.ops.gated_delta.chunk import (
    chunk_gated_delta_rule,
    l2norm,
    recurrent_gated_delta_rule,
    recurrent_step,
)
from hylo_model.ops.gated_delta.naive import naive_gated_delta_rule
from hylo_model.ops.gated_delta.step import decay_and_beta, fused_gates, gated_delta_step

__all__ = [
    "gated_delta_rule",
    "chunk_gated_delta_rule",
    "recurrent_gated_delta_rule",
    "recurrent_step",
    "naive_gated_delta_rule",
    "gated_delta_step",
    "decay_and_beta",
    "fused_gates",
    "l2norm",
    "fla_chunk_backward_supported",
]

# Longest input (without autograd) that takes the token-by-token form. fla's own GatedDeltaNet layer switches to
# fused_recurrent at 64 tokens; in PyTorch every token costs a few op launches, so the loop only wins when short.
FLA_RECURRENT_MAX_T = 64
TORCH_RECURRENT_MAX_T = 16


def fla_chunk_backward_supported(device: torch.device) -> bool:
    """Whether fla's chunk backward runs on ``device`` (see :func:`backend.fla_gated_backward_broken`); tilelang,
    when installed, replaces the broken kernel for the gated delta rule."""
    return not backend.fla_gated_backward_broken(device) or backend.has_module("tilelang")


def _use_fla(q: Tensor, needs_grad: bool) -> bool:
    if not backend.use_fast("gated_delta_rule", q, "fla.ops.gated_delta_rule"):
        return False
    if not needs_grad or fla_chunk_backward_supported(q.device):
        return True
    backend.backward_fallback("gated_delta_rule", "fla's chunk backward cannot run on this GPU with this triton "
                              "(Hopper needs triton >= 3.7.1 or `pip install tilelang`, fla issue #640)")
    return False


def gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    use_qk_l2norm: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """Gated delta rule over a sequence, per (batch, value head) with state ``S`` ``[K, V]``::

        S = S * exp(g_t);  u = beta_t * (v_t - S^T k_t);  S = S + k_t u^T;  o_t = S^T (scale * q_t)

    Args:
        q, k: ``[B, T, H, K]``; shared by ``HV // H`` consecutive value heads (grouped-value heads).
        v: ``[B, T, HV, V]``, ``HV`` a multiple of ``H``.
        g: ``[B, T, HV]`` log decay (``<= 0``).
        beta: ``[B, T, HV]`` write strength (usually a sigmoid, in ``(0, 1)``).
        scale: multiplies q; defaults to ``K ** -0.5``.
        initial_state: ``[B, HV, K, V]`` (float32 preferred) or ``None`` for zeros.
        output_final_state: also return the state after the last token (for decode / chunked prefill).
        use_qk_l2norm: L2-normalise q and k first (fla's ``x * rsqrt(sum(x^2) + 1e-6)``).
        chunk_size: chunk length of the PyTorch chunked path; fla's kernels use their own tuned 64.

    Returns:
        ``o`` ``[B, T, HV, V]`` in ``v.dtype`` and the final state ``[B, HV, K, V]`` float32, or ``None`` unless
        ``output_final_state``.

    Kernel: on CUDA with fla importable, ``chunk_gated_delta_rule`` (training / prefill) or
    ``fused_recurrent_gated_delta_rule`` (short inputs without autograd: decode; it has no backward). Otherwise
    the PyTorch chunked form, or the recurrent form for short inputs without autograd. With autograd on a GPU
    where fla's backward is known broken (:func:`fla_chunk_backward_supported`), the PyTorch path, with a
    warning (an error when the fast backend is forced).
    """
    if scale is None:
        scale = q.shape[-1] ** -0.5
    inputs = (q, k, v, g, beta) + (() if initial_state is None else (initial_state,))
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    T = q.shape[1]

    if _use_fla(q, needs_grad):
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fla_recurrent

        # fla's kernels take matmul operands of one dtype and return o in q's dtype; it handles HV > H itself.
        q, k = q.to(v.dtype), k.to(v.dtype)
        fla_fn = fla_recurrent if T <= FLA_RECURRENT_MAX_T and not needs_grad else fla_chunk
        o, final_state = fla_fn(
            q,
            k,
            v,
            g=g,
            beta=beta,
            scale=scale,
            initial_state=initial_state,
            output_final_state=output_final_state,
            use_qk_l2norm_in_kernel=use_qk_l2norm,
        )
        return o.to(v.dtype), final_state

    if use_qk_l2norm:
        q, k = l2norm(q.float()), l2norm(k.float())
    kwargs = dict(scale=scale, initial_state=initial_state, output_final_state=output_final_state)
    if T <= TORCH_RECURRENT_MAX_T and not needs_grad:
        return recurrent_gated_delta_rule(q, k, v, g, beta, **kwargs)
    return chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=chunk_size, **kwargs)
