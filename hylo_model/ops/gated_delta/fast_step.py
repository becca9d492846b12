"""fla's recurrent gated-delta kernel launched directly, for :func:`~hylo_model.ops.gated_delta.step.gated_delta_step`.

``fused_recurrent_gated_delta_rule`` wraps its kernel in an autograd ``Function``, an ``input_guard`` (a
``.contiguous()`` per argument) and a fresh final-state tensor. A decode step needs none of it: no gradient, inputs
already in the kernel's layout, and a state that should be updated where it lies (a static step replayed from a
CUDA graph otherwise copies every GDN layer's ``[B, HV, K, V]`` float32 state back into the cache: one
device-to-device copy per layer and token). The kernel reads each program's block of the initial state once,
before its time loop, and writes the same block after it, so the final state may alias the initial one.

The launch mirrors fla 0.6's ``fused_recurrent_gated_delta_rule_fwd`` (block sizes, grid, warps, stages); when the
installed fla's kernel does not take the arguments it passes, :func:`direct_kernel` returns None and the caller
takes fla's public function.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

# The keyword arguments the launch passes (the heuristics fill the USE_*/STORE_*/IS_VARLEN/HAS_* flags).
_ARGS = {"q", "k", "v", "g", "gk", "gv", "beta", "A_log", "dt_bias", "o", "h0", "ht", "cu_seqlens", "scale", "T",
         "H", "HV", "K", "V", "BK", "BV", "USE_QK_L2NORM_IN_KERNEL", "IS_BETA_HEADWISE", "STATE_V_FIRST",
         "APPLY_BETA_SIGMOID", "ALLOW_NEG_EIGVAL"}


@functools.cache
def direct_kernel():
    """fla's ``fused_recurrent_gated_delta_rule_fwd_kernel`` if it takes the arguments :func:`recurrent_step`
    passes, else None."""
    try:
        from fla.ops.gated_delta_rule.fused_recurrent import fused_recurrent_gated_delta_rule_fwd_kernel as kernel
    except ImportError:
        return None
    names = set(getattr(kernel, "arg_names", ()) or getattr(getattr(kernel, "fn", None), "arg_names", ()))
    return kernel if _ARGS <= names else None


def recurrent_step(q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, A_log: Tensor, dt_bias: Tensor, *,
                   scale: float, initial_state: Tensor | None, out_state: Tensor | None,
                   use_qk_l2norm: bool) -> tuple[Tensor, Tensor]:
    """Shapes as :func:`~hylo_model.ops.gated_delta.step.gated_delta_step`; ``out_state`` (float32 ``[B, HV, K, V]``,
    may be ``initial_state``) receives the final state, or None for a new tensor."""
    import triton

    kernel = direct_kernel()
    batch, steps, heads, k_dim = k.shape
    v_heads, v_dim = v.shape[2], v.shape[3]
    # The kernel indexes every input as a contiguous [B, T, ...] tensor: at batch 1 a packed projection's slices
    # already are; otherwise these are small copies.
    q, k, v = (x.to(v.dtype).contiguous() for x in (q, k, v))
    a, b = a.contiguous(), b.contiguous()
    h0 = None if initial_state is None else initial_state.contiguous()
    # Written directly when it is contiguous (in place when it is the initial state), else copied into after.
    direct = out_state is not None and out_state.is_contiguous()
    final = out_state if direct else q.new_empty(batch, v_heads, k_dim, v_dim, dtype=torch.float32)
    o = torch.empty_like(v)
    block_k = triton.next_power_of_2(k_dim)
    block_v = min(8, triton.next_power_of_2(v_dim))
    grid = (triton.cdiv(v_dim, block_v) * batch * v_heads,)
    with torch.cuda.device(q.device):
        kernel[grid](
            q=q, k=k, v=v, g=a, gk=None, gv=None, beta=b, A_log=A_log, dt_bias=dt_bias, o=o, h0=h0,
            ht=final, cu_seqlens=None, scale=scale, T=steps, H=heads, HV=v_heads, K=k_dim, V=v_dim, BK=block_k,
            BV=block_v, USE_QK_L2NORM_IN_KERNEL=use_qk_l2norm, IS_BETA_HEADWISE=b.ndim != v.ndim,
            STATE_V_FIRST=False, APPLY_BETA_SIGMOID=True, ALLOW_NEG_EIGVAL=False, num_warps=1, num_stages=3,
        )
    if out_state is not None and not direct:
        final = out_state.copy_(final)
    return o, final
