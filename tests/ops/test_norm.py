"""RMSNorm, the residual add fused with it, gated RMSNorm and SwiGLU: the torch path against transformers' and
mamba_ssm's formulas (exact), a static decode step's attention against SDPA, and (on CUDA) fla's fused kernels
against the float32 torch path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from hylo_model.layers.common import attend_slots
from hylo_model.ops import backend
from hylo_model.ops.activation import swiglu
from hylo_model.ops.norm import _gated_rms_norm_native, add_rms_norm, gated_rms_norm, gated_rms_norm_torch, rms_norm

# (group_size, norm_before_gate): GDN's per-head norm then gate; Mamba2's gate then norm per group.
GATED_CASES = [(128, True), (256, False), (1024, False)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_transformers_llama(dtype):
    """The torch path is the teacher's own RMSNorm to the bit (the upcycled student starts at the teacher)."""
    torch.manual_seed(0)
    x = torch.randn(2, 7, 64, dtype=dtype) * 3
    reference = LlamaRMSNorm(64, eps=1e-6).to(dtype)
    with torch.no_grad():
        reference.weight.copy_(torch.randn(64))
    with backend.force_backend("torch"):
        assert torch.equal(rms_norm(x, reference.weight, 1e-6), reference(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_rms_norm_is_the_add_then_the_norm(dtype):
    """The torch path of the fused residual add is the two steps it replaces, to the bit: the sum rounded to the
    dtype, then the norm of that sum (so the CPU model computes exactly what the unfused block did)."""
    torch.manual_seed(0)
    x, residual = torch.randn(2, 7, 64, dtype=dtype), torch.randn(2, 7, 64, dtype=dtype) * 4
    weight = torch.randn(64, dtype=dtype)
    with backend.force_backend("torch"):
        normed, summed = add_rms_norm(x, residual, weight, 1e-6)
        assert torch.equal(summed, residual + x)
        assert torch.equal(normed, rms_norm(residual + x, weight, 1e-6))
        assert torch.equal(swiglu(x, residual), F.silu(x) * residual)


@pytest.mark.parametrize("group_size, norm_before_gate", GATED_CASES)
def test_gated_rms_norm_formula(group_size, norm_before_gate):
    """float64 formula: mamba_ssm's RMSNormGated (gate, then norm per group) or fla's (norm, then gate)."""
    torch.manual_seed(0)
    x, z = torch.randn(2, 5, 1024, dtype=torch.float64), torch.randn(2, 5, 1024, dtype=torch.float64)
    weight = torch.randn(1024, dtype=torch.float64)
    gated = x * F.silu(z) if not norm_before_gate else x
    groups = gated.view(2, 5, -1, group_size)
    normed = (groups / groups.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()).view(2, 5, 1024) * weight
    expected = normed * F.silu(z) if norm_before_gate else normed
    with backend.force_backend("torch"):
        got = gated_rms_norm(x.float(), z.float(), weight.float(), 1e-6, group_size, norm_before_gate)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def _gated_formula64(x, z, weight, group_size, norm_before_gate):
    """The float64 formula of test_gated_rms_norm_formula, differentiable."""
    gated = x * F.silu(z) if not norm_before_gate else x
    groups = gated.reshape(*x.shape[:-1], -1, group_size)
    normed = (groups / groups.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()).reshape(x.shape) * weight
    return normed * F.silu(z) if norm_before_gate else normed


@pytest.mark.parametrize("group_size, norm_before_gate", GATED_CASES)
def test_gated_rms_norm_gradients_match_float64(group_size, norm_before_gate):
    """Gradients of x, z and the weight from the float32 torch path == autograd through the float64 formula
    (a random linear function of the output; x at 3x unit scale and a few near-zero groups, where the eps and
    the 1/rms factor matter most). Largest measured relative error 1.3e-7."""
    torch.manual_seed(0)
    x, z = torch.randn(2, 5, 1024, dtype=torch.float64) * 3, torch.randn(2, 5, 1024, dtype=torch.float64)
    x[0, 0, :group_size] *= 1e-3
    weight = torch.randn(1024, dtype=torch.float64)
    cotangent = torch.randn(2, 5, 1024, dtype=torch.float64)
    leaves64 = [t.clone().requires_grad_() for t in (x, z, weight)]
    (_gated_formula64(*leaves64, group_size, norm_before_gate) * cotangent).sum().backward()
    leaves32 = [t.float().requires_grad_() for t in (x, z, weight)]
    with backend.force_backend("torch"):
        out = gated_rms_norm(*leaves32, 1e-6, group_size, norm_before_gate)
    (out * cotangent.float()).sum().backward()
    errors = {name: ((a.grad.double() - b.grad).norm() / b.grad.norm()).item()
              for name, a, b in zip(("x", "z", "weight"), leaves32, leaves64)}
    print(f"\ngated-{group_size}-{'before' if norm_before_gate else 'after'} grad rel. errors {errors}")
    assert max(errors.values()) < 1e-6, errors


@pytest.mark.parametrize("groups", [1, 4])
def test_attend_slots_equals_sdpa_over_the_valid_slots(groups):
    """A static step's attention over S slots == SDPA over the slots that hold tokens (float32, any batch)."""
    torch.manual_seed(0)
    q = torch.randn(2, 3, groups, 16)
    k, v = torch.randn(2, 3, 40, 16), torch.randn(2, 3, 40, 8)
    valid = torch.arange(40) < 29
    expected = F.scaled_dot_product_attention(q, k[:, :, :29], v[:, :, :29], scale=0.3)
    torch.testing.assert_close(attend_slots(q, k, v, valid, 0.3), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------- CUDA
def _grads(fn, *tensors):
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*tensors)
    gen = torch.Generator(device=out.device).manual_seed(1)
    (out.float() * torch.randn(out.shape, generator=gen, device=out.device)).sum().backward()
    return out, [t.grad for t in tensors]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.gpu
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to the torch path fails
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype, forward_tol, grad_tol", [(torch.float32, 1e-5, 1e-4), (torch.bfloat16, 1e-2, 4e-2)])
@pytest.mark.parametrize("case", ["plain", "residual", "swiglu"]
                         + [f"gated-{g}-{'before' if b else 'after'}" for g, b in GATED_CASES])
def test_fused_norms_match_torch(case, dtype, forward_tol, grad_tol):
    """fla's fused kernels (forward and backward) == the float32 torch path, relative error within the bounds:
    the norms, the residual add fused with a norm (both of its outputs), and SwiGLU (with its weight standing in
    for a third input, so every gradient is checked)."""
    assert backend.has_module("fla.modules.norm"), "fla.modules.norm does not import (pip install 'hylo-search[gpu]')"
    torch.manual_seed(0)
    x, z = torch.randn(2, 1000, 2048, device="cuda") * 2, torch.randn(2, 1000, 2048, device="cuda")
    weight = torch.randn(2048, device="cuda")
    if case == "plain":
        def fn(x, z, weight):
            return rms_norm(x, weight, 1e-6) * z
    elif case == "residual":
        def fn(x, z, weight):
            normed, summed = add_rms_norm(x, z, weight, 1e-6)
            return torch.cat([normed, summed], dim=-1)
    elif case == "swiglu":
        def fn(x, z, weight):
            return swiglu(x, z) * weight
    else:
        _, size, order = case.split("-")

        def fn(x, z, weight):
            return gated_rms_norm(x, z, weight, 1e-6, int(size), order == "before")

    with backend.force_backend("torch"):
        ref, ref_grads = _grads(fn, x, z, weight)
    with backend.force_backend("fast"):
        out, grads = _grads(fn, x.to(dtype), z.to(dtype), weight.to(dtype))
    assert out.dtype == dtype
    errors = [_rel(out, ref)] + [_rel(g, r) for g, r in zip(grads, ref_grads)]
    print(f"\n{case} {dtype}: output, dx, dz, dweight relative errors {errors}")
    assert errors[0] < forward_tol and max(errors[1:]) < grad_tol, errors


@pytest.mark.parametrize("norm_before_gate", [True, False], ids=["norm-then-gate", "gate-then-norm"])
@pytest.mark.parametrize("group_size", [16, 64], ids=["groups", "whole"])
def test_native_gated_norm_matches_reference(group_size, norm_before_gate):
    """The native-kernel form an eager CUDA decode step takes computes the reference formula (float32 here)."""
    gen = torch.Generator().manual_seed(5)
    x, z = torch.randn(2, 3, 64, generator=gen), torch.randn(2, 3, 64, generator=gen)
    weight = torch.randn(64, generator=gen)
    got = _gated_rms_norm_native(x, z, weight, 1e-6, group_size, norm_before_gate)
    ref = gated_rms_norm_torch(x, z, weight, 1e-6, group_size, norm_before_gate)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_launch_light_scope_and_forced_backend():
    assert not backend.prefers_native()
    with backend.launch_light():
        assert backend.prefers_native()
        with backend.launch_light(False):
            assert not backend.prefers_native()
        with backend.force_backend("fast"):
            assert not backend.prefers_native()  # forcing the fast path means the Triton kernels
    assert not backend.prefers_native()
