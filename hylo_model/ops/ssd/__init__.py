"""Mamba2 SSD (state-space duality) scan with per-call kernel selection; see README.md for the math."""

from __future__ import annotations

import torch

from .. import backend
from .chunk import check_shapes, requires_grad, ssd_chunked, ssd_recurrent
from .fast import chunk_backward_blocked, ssd_fla, ssd_mamba
from .naive import naive_ssd

__all__ = ["ssd", "naive_ssd", "ssd_chunked", "ssd_recurrent", "takes_mamba"]

# Up to this many tokens without gradients (decode, short speculative drafts) the token loop beats the
# chunked form, which would pad a short input up to a chunk.
RECURRENT_MAX_T = 16
# From this many tokens (batch x time) mamba_ssm's fused kernel, which has the D skip in its epilogue, beats fla's
# chunk_simple_gla plus the separate skip; below it, its launches cost more than they save. H100, 16 heads x 128,
# with D (benchmarks/RESULTS.md): 4K 0.408 ms vs fla's 0.291; 16K 0.457 vs 0.669; 64K 1.698 vs 2.546. The crossover
# lies between 4K and 16K and was not measured closer.
MAMBA_MIN_TOKENS = 8192
# mamba_ssm's own default chunk (its Mamba2's): 0.457 / 1.698 ms at 16K / 64K against 0.562 / 2.171 with 64.
MAMBA_CHUNK_SIZE = 256


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    *,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mamba2 selective state-space scan: ``S_t = exp(dt_t A) S_{t-1} + dt_t x_t B_t^T``, ``y_t = S_t C_t + D x_t``.

    Args:
        x: ``[Bsz, T, H, P]`` inputs.
        dt: ``[Bsz, T, H]`` step sizes, already softplus'ed by the caller (>= 0).
        A: ``[H]`` negative decay rates (``-exp(A_log)``).
        B: ``[Bsz, T, GB, N]``; C: ``[Bsz, T, GC, N]``. GB and GC each divide H; head ``h`` uses group
            ``h // (H // G)`` (mamba_ssm's convention).
        D: ``[H]`` skip weights, or None.
        initial_state: ``[Bsz, H, P, N]`` float32 state (mamba_ssm's ``ssm_state`` layout), or None for zeros.
        output_final_state: also return the state after the last token.
        chunk_size: chunk length of the torch chunked path (fla always uses its own 64, mamba_ssm
            ``MAMBA_CHUNK_SIZE``).

    Returns:
        ``y [Bsz, T, H, P]`` in ``x.dtype`` and the final state ``[Bsz, H, P, N]`` float32 (None unless
        ``output_final_state``).

    Kernel choice: on CUDA with fla importable, mamba_ssm's fused kernel (its chunk of ``MAMBA_CHUNK_SIZE``) when
    :func:`takes_mamba`, else fla's ``chunk_simple_gla``; for at most ``RECURRENT_MAX_T`` tokens without gradients,
    fla's ``fused_recurrent_simple_gla``. Where fla blocks the ``chunk_simple_gla`` backward (Hopper with
    3.4 <= Triton < 3.7.1, see ``fast.py``), calls that need gradients take the torch chunked path instead, with a
    warning (an error under ``force_backend("fast")``). Otherwise the torch paths: :func:`ssd_recurrent` for short inputs without gradients,
    :func:`ssd_chunked` for the rest.
    """
    check_shapes(x, dt, A, B, C, D, initial_state)
    needs_grad = requires_grad(x, dt, A, B, C, D, initial_state)
    short = x.shape[1] <= RECURRENT_MAX_T and not needs_grad
    kwargs = dict(D=D, initial_state=initial_state, output_final_state=output_final_state)
    if backend.use_fast("ssd", x, "fla.ops.simple_gla"):
        blocked = needs_grad and chunk_backward_blocked(x.device)
        if takes_mamba(x.shape[0] * x.shape[1], B.shape[2] == C.shape[2], short, blocked):
            return ssd_mamba(x, dt, A, B, C, chunk_size=MAMBA_CHUNK_SIZE, **kwargs)
        if not blocked:
            return ssd_fla(x, dt, A, B, C, recurrent=short, **kwargs)
        backend.backward_fallback("ssd", "fla's chunk_simple_gla backward is disabled on Hopper with Triton < 3.7.1 "
                                  "(fla issue #640); upgrade Triton to >= 3.7.1 or install mamba-ssm")
    if short:
        return ssd_recurrent(x, dt, A, B, C, **kwargs)
    return ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, **kwargs)


def takes_mamba(tokens: int, same_groups: bool, short: bool, fla_backward_blocked: bool) -> bool:
    """Whether a fast-path SSD call goes to mamba_ssm's fused kernel: it imports, B and C have one group count, the
    call is not decode-sized, and it is long enough to gain (``MAMBA_MIN_TOKENS``) or needs the gradients fla
    cannot give on this GPU (mamba_ssm's backward runs there)."""
    if short or not same_groups or not backend.has_module("mamba_ssm.ops.triton.ssd_combined"):
        return False
    return tokens >= MAMBA_MIN_TOKENS or fla_backward_blocked
