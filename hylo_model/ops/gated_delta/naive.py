"""Per-timestep float32 reference of the gated delta rule (slow; for tests only).

Same semantics as fla's ``naive_recurrent_gated_delta_rule`` (fla/ops/gated_delta_rule/naive.py), extended to
grouped-value heads. With the state ``S`` of shape ``[K, V]`` per (batch, value head), each step ``t`` does::

    S   = S * exp(g_t)                      # gated decay
    u   = beta_t * (v_t - S^T k_t)          # delta rule: write only what S does not already predict
    S   = S + k_t u^T
    o_t = S^T (scale * q_t)
"""

from __future__ import annotations

import torch
from torch import Tensor


def naive_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Loop over time in float32. Differentiable (no in-place updates of tensors autograd needs).

    Args:
        q, k: ``[B, T, H, K]``; repeated to the value heads (value head ``j`` reads q/k head ``j // (HV // H)``).
        v: ``[B, T, HV, V]`` with ``HV`` a multiple of ``H``.
        g: ``[B, T, HV]`` log decay (``<= 0``).
        beta: ``[B, T, HV]`` write strength.
        scale: multiplies ``q``; defaults to ``K ** -0.5``.
        initial_state: ``[B, HV, K, V]`` or ``None`` (zeros).
        output_final_state: return the state after the last step.

    Returns:
        ``o`` of shape ``[B, T, HV, V]`` in ``v.dtype`` and the final state ``[B, HV, K, V]`` in float32 (or ``None``).
    """
    B, T, H, K = q.shape
    HV, V = v.shape[-2:]
    if scale is None:
        scale = K**-0.5
    groups = HV // H
    q, k = (x.repeat_interleave(groups, dim=2) if groups > 1 else x for x in (q, k))
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    q = q * scale

    state = q.new_zeros(B, HV, K, V) if initial_state is None else initial_state.float()
    outputs = []
    for t in range(T):
        state = state * g[:, t].exp()[..., None, None]
        prediction = torch.einsum("bhk,bhkv->bhv", k[:, t], state)
        u = beta[:, t, :, None] * (v[:, t] - prediction)
        state = state + k[:, t, :, :, None] * u[:, :, None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], state))
    o = torch.stack(outputs, dim=1) if T > 0 else v.new_zeros(B, 0, HV, V, dtype=torch.float32)
    return o.to(v.dtype), (state if output_final_state else None)
