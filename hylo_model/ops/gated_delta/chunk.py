"""Pure-PyTorch gated delta rule: a chunked (WY / UT-transform) form for training and prefill, and a recurrent
form for decode. Both compute in float32, are differentiable with autograd and return ``o`` in ``v.dtype``.

Layout is time-major like fla (``head_first=False``): q, k ``[B, T, H, K]``; v ``[B, T, HV, V]``; g, beta
``[B, T, HV]``; state ``[B, HV, K, V]``. ``HV`` must be a multiple of ``H``: value head ``j`` reads q/k head
``j // (HV // H)`` (``repeat_interleave``, the same grouping as fla's GVA kernels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """L2-normalise the last dim with fla's formula ``x / sqrt(sum(x^2) + eps)`` (not ``F.normalize``, which
    clamps the norm instead of adding ``eps``), so the torch and fla paths normalise identically."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def _head_major_float(
    q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, scale: float | None
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Expand q/k to the value heads, cast to float32, scale q and move heads before time.

    Returns q, k ``[B, HV, T, K]``; v ``[B, HV, T, V]``; g, beta ``[B, HV, T]``.
    """
    H, K = q.shape[-2:]
    HV = v.shape[-2]
    if k.shape != q.shape or HV % H != 0:
        raise ValueError(f"need q, k of equal shape [B,T,H,K] and HV % H == 0; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if scale is None:
        scale = K**-0.5
    if HV != H:
        q, k = (x.repeat_interleave(HV // H, dim=2) for x in (q, k))
    q, k, v, g, beta = (x.transpose(1, 2).float() for x in (q, k, v, g, beta))
    return q * scale, k, v, g, beta


def _initial_state(initial_state: Tensor | None, like: Tensor, K: int, V: int) -> Tensor:
    B, HV = like.shape[:2]
    if initial_state is None:
        return like.new_zeros(B, HV, K, V)
    if initial_state.shape != (B, HV, K, V):
        raise ValueError(f"initial_state must be [B, HV, K, V] = {(B, HV, K, V)}, got {tuple(initial_state.shape)}")
    return initial_state.float()


def recurrent_step(q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
    """One token of the gated delta rule, head-major float32 (the inner step of :func:`recurrent_gated_delta_rule`).

    Args:
        q: ``[B, HV, K]``, already scaled (and expanded to the value heads).
        k: ``[B, HV, K]``.
        v: ``[B, HV, V]``.
        g, beta: ``[B, HV]``.
        state: ``[B, HV, K, V]``.

    Returns:
        ``o`` ``[B, HV, V]`` and the new state ``[B, HV, K, V]`` (a new tensor; the input state is not modified).
    """
    state = state * g.exp()[..., None, None]
    u = beta[..., None] * (v - torch.einsum("bhk,bhkv->bhv", k, state))
    state = state + k[..., :, None] * u[..., None, :]
    return torch.einsum("bhk,bhkv->bhv", q, state), state


def recurrent_gated_delta_rule(
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
    """Token-by-token form, cheapest for decode (``T`` of 1 to a few tokens).

    Args:
        q, k: ``[B, T, H, K]``. v: ``[B, T, HV, V]``. g (log decay, ``<= 0``), beta: ``[B, T, HV]``.
        scale: multiplies q; defaults to ``K ** -0.5``.
        initial_state: ``[B, HV, K, V]`` or ``None`` (zeros).
        output_final_state: also return the state after the last token.

    Returns:
        ``o`` ``[B, T, HV, V]`` in ``v.dtype`` and the final state ``[B, HV, K, V]`` float32 (or ``None``).
    """
    B, T, HV, V = v.shape
    q, k, v_f, g, beta = _head_major_float(q, k, v, g, beta, scale)
    state = _initial_state(initial_state, q, q.shape[-1], V)
    outputs = []
    for t in range(T):
        o_t, state = recurrent_step(q[:, :, t], k[:, :, t], v_f[:, :, t], g[:, :, t], beta[:, :, t], state)
        outputs.append(o_t)
    o = torch.stack(outputs, dim=1) if T else v_f.new_zeros(B, 0, HV, V)
    return o.to(v.dtype), (state if output_final_state else None)


def chunk_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    *,
    scale: float | None = None,
    initial_state: Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[Tensor, Tensor | None]:
    """Chunked form: intra-chunk work as batched matmuls plus one triangular solve, a loop over chunks only.

    Within a chunk of ``C`` tokens (``G_i`` = cumulative log decay from the chunk start, ``S0`` = incoming state),
    the delta-rule writes ``U`` solve the unit lower-triangular system (the UT transform)::

        (I + A) U = beta*V - diag(beta * exp(G)) K S0,    A_ij = beta_i (k_i . k_j) exp(G_i - G_j)  for j < i

    so ``U = W_v - W_k S0`` with ``W_v = (I + A)^-1 beta*V`` and ``W_k = (I + A)^-1 (beta * exp(G) * K)``, both
    computed for every chunk at once. The sequential scan then only does, per chunk::

        O   = exp(G) * Q S0 + tril((Q K^T) * exp(G_i - G_j)) U
        S0' = exp(G_C) S0 + (exp(G_C - G) * K)^T U

    ``T`` is zero-padded to a multiple of ``chunk_size``; padded tokens have ``beta = 0`` and ``g = 0``, so they
    write nothing and do not decay the state. Every ``exp`` argument is ``<= 0`` (upper triangles are masked to
    ``-inf`` first), so nothing overflows and masked entries get zero gradient.

    Args:
        q, k: ``[B, T, H, K]``. v: ``[B, T, HV, V]``. g (log decay, ``<= 0``), beta: ``[B, T, HV]``.
        scale: multiplies q; defaults to ``K ** -0.5``.
        initial_state: ``[B, HV, K, V]`` or ``None`` (zeros).
        output_final_state: also return the state after the last token.
        chunk_size: tokens per chunk ``C``.

    Returns:
        ``o`` ``[B, T, HV, V]`` in ``v.dtype`` and the final state ``[B, HV, K, V]`` float32 (or ``None``).
    """
    B, T, HV, V = v.shape
    C = chunk_size
    q, k, v_f, g, beta = _head_major_float(q, k, v, g, beta, scale)
    K = q.shape[-1]
    state = _initial_state(initial_state, q, K, V)

    pad = (-T) % C
    if pad:
        q, k, v_f = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v_f))
        g, beta = (F.pad(x, (0, pad)) for x in (g, beta))
    N = (T + pad) // C
    # [B, HV, N, C, D] chunks and [B, HV, N, C] per-token scalars.
    q, k, v_f = (x.reshape(B, HV, N, C, x.shape[-1]) for x in (q, k, v_f))
    g, beta = (x.reshape(B, HV, N, C) for x in (g, beta))

    g_cum = g.cumsum(-1)
    strictly_upper = torch.ones(C, C, dtype=torch.bool, device=q.device).triu(1)
    # decay[..., i, j] = exp(G_i - G_j) for j <= i, 0 above the diagonal.
    decay = (g_cum[..., :, None] - g_cum[..., None, :]).masked_fill(strictly_upper, float("-inf")).exp()

    k_beta = k * beta[..., None]
    # solve_triangular with unitriangular=True reads only the strict lower triangle of A: the system is (I + A).
    ut_system = (k_beta @ k.transpose(-1, -2)) * decay
    w_v = torch.linalg.solve_triangular(ut_system, v_f * beta[..., None], upper=False, unitriangular=True)
    w_k = torch.linalg.solve_triangular(ut_system, k_beta * g_cum.exp()[..., None], upper=False, unitriangular=True)

    intra_attn = (q @ k.transpose(-1, -2)) * decay
    q_decayed = q * g_cum.exp()[..., None]
    k_decayed = k * (g_cum[..., -1:] - g_cum).exp()[..., None]
    chunk_decay = g_cum[..., -1].exp()[..., None, None]

    outputs = []
    for n in range(N):
        u = w_v[:, :, n] - w_k[:, :, n] @ state
        outputs.append(q_decayed[:, :, n] @ state + intra_attn[:, :, n] @ u)
        state = state * chunk_decay[:, :, n] + k_decayed[:, :, n].transpose(-1, -2) @ u

    o = torch.stack(outputs, dim=2) if N else v_f.new_zeros(B, HV, 0, C, V)
    o = o.reshape(B, HV, N * C, V)[:, :, :T].transpose(1, 2)
    return o.to(v.dtype).contiguous(), (state if output_final_state else None)
