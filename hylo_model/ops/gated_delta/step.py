"""One decode token of the gated delta rule with the gates still raw: ``g = -exp(A_log) * softplus(a + dt_bias)``,
``beta = sigmoid(b)``.

Computed as separate float32 ops, the two gates cost about ten small kernels per layer and token. fla >= 0.6's
``fused_recurrent_gated_delta_rule`` computes both inside its kernel (``use_gate_in_kernel``,
``use_beta_sigmoid_in_kernel``); elsewhere :func:`decay_and_beta` computes them in PyTorch for
:func:`~hylo_model.ops.gated_delta.gated_delta_rule`.
"""

from __future__ import annotations

import functools
import inspect

import torch.nn.functional as F
from torch import Tensor

from hylo_model.ops import backend

__all__ = ["gated_delta_step", "decay_and_beta", "fused_gates"]


def decay_and_beta(a: Tensor, b: Tensor, A_log: Tensor, dt_bias: Tensor) -> tuple[Tensor, Tensor]:
    """``g = -exp(A_log) * softplus(a + dt_bias)`` and ``beta = sigmoid(b)``, float32, shapes of ``a``/``b``."""
    g = -A_log.float().exp() * F.softplus(a.float() + dt_bias.float())
    return g, b.float().sigmoid()


@functools.cache
def _fla_fuses_gates() -> bool:
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

    params = inspect.signature(fused_recurrent_gated_delta_rule).parameters
    return "use_gate_in_kernel" in params and "use_beta_sigmoid_in_kernel" in params


def fused_gates(q: Tensor) -> bool:
    """Whether :func:`gated_delta_step` can run for ``q``: fla's decode kernel with the gates inside it (CUDA,
    fla importable and new enough, no forced torch path)."""
    return backend.use_fast("gated_delta_rule", q, "fla.ops.gated_delta_rule") and _fla_fuses_gates()


def gated_delta_step(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    a: Tensor,
    b: Tensor,
    A_log: Tensor,
    dt_bias: Tensor,
    *,
    scale: float,
    initial_state: Tensor | None,
    use_qk_l2norm: bool = True,
    out_state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """fla's recurrent kernel on raw gates, for a few tokens without gradients (where :func:`fused_gates`);
    elsewhere callers take :func:`decay_and_beta` and ``gated_delta_rule``.

    Args:
        q, k: ``[B, T, H, K]``; v: ``[B, T, HV, V]``.
        a, b: ``[B, T, HV]`` raw projections (any float dtype, any strides).
        A_log, dt_bias: ``[HV]``.
        initial_state: ``[B, HV, K, V]`` float32, or None.
        out_state: where the final state goes (``[B, HV, K, V]`` float32; ``initial_state`` itself updates the
            state in place, as a static step needs), or None for a new tensor.

    Returns:
        ``o [B, T, HV, V]`` in ``v.dtype`` and the final state ``[B, HV, K, V]`` float32 (``out_state`` when given).

    The kernel is launched directly (``fast_step.py``: no autograd wrapper, no copy of the state); with an fla whose
    kernel takes other arguments, through fla's public function.
    """
    from .fast_step import direct_kernel, recurrent_step

    if direct_kernel() is not None:
        return recurrent_step(q, k, v, a, b, A_log, dt_bias, scale=scale, initial_state=initial_state,
                              out_state=out_state, use_qk_l2norm=use_qk_l2norm)
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule

    o, state = fused_recurrent_gated_delta_rule(
        q.to(v.dtype), k.to(v.dtype), v, g=a, beta=b, scale=scale, initial_state=initial_state,
        output_final_state=True, use_qk_l2norm_in_kernel=use_qk_l2norm, use_gate_in_kernel=True,
        A_log=A_log, dt_bias=dt_bias, use_beta_sigmoid_in_kernel=True,
    )
    if out_state is not None:
        out_state.copy_(state)
        state = out_state
    return o.to(v.dtype), state
