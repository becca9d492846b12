"""RMSNorm (alone or fused with the residual add before it) and gated RMSNorm: the Llama/Qwen and mamba_ssm/fla
formulas in PyTorch (the reference, any device) and fla's fused Triton kernels on CUDA (one pass over the activations
instead of a float32 copy per elementwise step).
In a 128K-token prefill of a Qwen3-1.7B-shape 4 MLA + 24 GDN model on an H100, fusing them cut the norms, residuals
and embeddings from 0.266 s to 0.050 s and the GDN mixers from 0.563 s to 0.417 s (``benchmarks/RESULTS.md``, run F).

Rounding differs by at most one step of the output dtype: the fused kernels round once, after the weight; the
Llama/Qwen formula rounds the normalised activations to the input dtype before the weight multiplies them.

A decode step run eagerly on CUDA (:func:`~hylo_model.ops.backend.launch_light`) takes torch's own fused RMSNorm
kernel instead of fla's: the same math with a lighter launch (with it, HyLo's eager decode at 8K went from 0.89× to
1.19× the teacher's on an H100, ``benchmarks/RESULTS.md``, fifth session).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import backend

__all__ = ["rms_norm", "rms_norm_torch", "add_rms_norm", "gated_rms_norm", "gated_rms_norm_torch"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x / rms(x))`` over the last dim, statistics in float32; the output dtype is ``x``'s and
    ``weight``'s promoted (what transformers' Llama/Qwen RMSNorm returns). The fused kernel serves the case where
    both have one dtype; a float32 weight on bf16 activations keeps the PyTorch path and its float32 output."""
    if weight.dtype == x.dtype and backend.use_fast("rms_norm", x, "fla.modules.norm"):
        if backend.prefers_native():
            return F.rms_norm(x, (x.shape[-1],), weight, eps)
        from fla.modules.norm.layernorm import rms_norm as fla_rms_norm

        return fla_rms_norm(x, weight, None, eps=eps)
    return rms_norm_torch(x, weight, eps)


def rms_norm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rms_norm(residual + x), residual + x)``: a pre-norm block's residual add and the next norm, one kernel on
    CUDA (fla's norm with ``residual`` and ``prenorm``) instead of two. The sum is rounded to ``residual``'s dtype
    as the separate add rounds it; the fused kernel normalises the unrounded float32 sum, which moves the normed
    output by about one rounding step of its dtype (the GPU test bounds it)."""
    if weight.dtype == x.dtype == residual.dtype and backend.use_fast("rms_norm", x, "fla.modules.norm"):
        if backend.prefers_native():
            summed = residual + x
            return F.rms_norm(summed, (x.shape[-1],), weight, eps), summed
        from fla.modules.norm.layernorm import rms_norm as fla_rms_norm

        normed, summed = fla_rms_norm(x, weight, None, residual=residual, eps=eps, prenorm=True)
        return normed, summed
    summed = residual + x
    return rms_norm_torch(summed, weight, eps), summed


def gated_rms_norm(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, group_size: int, norm_before_gate: bool
) -> torch.Tensor:
    """``rmsnorm(x * silu(z))`` per group of ``group_size`` channels (mamba_ssm's RMSNormGated), or
    ``rmsnorm(x) * silu(z)`` with ``norm_before_gate`` (fla's FusedRMSNormGated); float32 inside, ``x.dtype`` out."""
    if backend.use_fast("gated_rms_norm", x, "fla.modules.norm"):
        if backend.prefers_native() and weight.dtype == x.dtype == z.dtype:
            return _gated_rms_norm_native(x, z, weight, eps, group_size, norm_before_gate)
        from fla.modules.norm.layernorm_gated import rmsnorm_fn

        return rmsnorm_fn(x, weight, None, z=z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate)
    return gated_rms_norm_torch(x, z, weight, eps, group_size, norm_before_gate)


def _gated_rms_norm_native(x, z, weight, eps, group_size, norm_before_gate):
    """The same formula in torch's native kernels (its fused RMSNorm, then SiLU and a product), each rounding to
    ``x.dtype``: what an eagerly run decode step takes (:func:`backend.launch_light`)."""
    gate = F.silu(z)
    if not norm_before_gate:
        x = x * gate
    shape = x.shape
    if group_size == shape[-1]:
        x = F.rms_norm(x, (group_size,), weight, eps)
    else:
        x = F.rms_norm(x.reshape(*shape[:-1], shape[-1] // group_size, group_size), (group_size,), None, eps)
        x = x.reshape(shape) * weight
    return x * gate if norm_before_gate else x


def gated_rms_norm_torch(
    x: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float, group_size: int, norm_before_gate: bool
) -> torch.Tensor:
    dtype = x.dtype
    x, z = x.float(), z.float()
    if not norm_before_gate:
        x = x * F.silu(z)
    shape = x.shape
    x = x.reshape(*shape[:-1], shape[-1] // group_size, group_size)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    x = x.reshape(shape) * weight.float()
    if norm_before_gate:
        x = x * F.silu(z)
    return x.to(dtype)
