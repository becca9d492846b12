"""Causal depthwise conv: torch path against the per-step loop, state carry, decode, a cross-check against
transformers' Mamba2 conv helpers, and (on CUDA) fla's Triton kernels against the torch path."""

from __future__ import annotations

import inspect

import pytest
import torch

from hylo_model.ops import backend
from hylo_model.ops.conv import causal_conv1d, naive_causal_conv1d


def make_inputs(bsz, seqlen, channels, width, *, state, bias=True, seed=0, device="cpu", dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    return dict(
        x=randn(bsz, seqlen, channels),
        weight=randn(channels, width),
        bias=randn(channels) if bias else None,
        conv_state=randn(bsz, channels, width - 1) if state else None,
    )


def run_with_grads(fn, inputs, seed=1):
    """Forward, then gradients of a random linear function of ``y`` and the new state."""
    inputs = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in inputs.items()}
    y, state = fn(**inputs)
    gen = torch.Generator().manual_seed(seed)
    loss = (y.float() * torch.randn(y.shape, generator=gen).to(y.device)).sum()
    loss = loss + (state.float() * torch.randn(state.shape, generator=gen).to(y.device)).sum()
    names = [k for k, v in inputs.items() if v is not None]
    grads = torch.autograd.grad(loss, [inputs[k] for k in names], allow_unused=True)
    grads = {k: torch.zeros_like(inputs[k]) if g is None else g for k, g in zip(names, grads)}
    return y, state, grads


def assert_close(actual, expected, rtol=1e-6, name=""):
    # float32 paths against each other: measured max |diff| <= 2.3e-7 of the reference's largest value.
    atol = rtol * max(expected.abs().max().item(), 1e-6)
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def rel_err(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-12)).item()


# (seqlen, width): T == 1, T < W - 1, T == W - 1, longer than the window.
CASES = [(1, 4), (2, 4), (3, 4), (17, 4), (9, 2)]


@pytest.mark.parametrize("activation", ["silu", None], ids=["silu", "linear"])
@pytest.mark.parametrize("state", [False, True], ids=["zero-state", "state"])
@pytest.mark.parametrize("seqlen,width", CASES, ids=[f"B2-T{t}-C6-W{w}" for t, w in CASES])
def test_torch_matches_naive(seqlen, width, state, activation):
    inputs = make_inputs(2, seqlen, 6, width, state=state, seed=seqlen)

    def ref(**kw):
        return naive_causal_conv1d(**kw, activation=activation, output_final_state=True)

    def ours(**kw):
        with backend.force_backend("torch"):
            return causal_conv1d(**kw, activation=activation, output_final_state=True)

    y_ref, s_ref, g_ref = run_with_grads(ref, inputs)
    y, s, g = run_with_grads(ours, inputs)
    assert y.shape == (2, seqlen, 6) and s.shape == (2, 6, width - 1)
    assert s.is_contiguous()  # the decode step's kernel and a CUDA graph's in-place updates need it
    assert_close(y, y_ref, name="y")
    assert_close(s, s_ref, name="state")
    for name in g_ref:
        assert_close(g[name], g_ref[name], name=f"d{name}")


def test_no_bias_and_no_state_output():
    inputs = make_inputs(2, 5, 6, 4, state=False, bias=False)
    y, s = causal_conv1d(**inputs)
    y_ref, _ = naive_causal_conv1d(**inputs)
    assert s is None
    assert_close(y, y_ref, name="y")


SPLITS = [(5, 12), (1, 2, 14), (2, 1, 1, 13)]


@pytest.mark.parametrize("splits", SPLITS, ids=["B2-T17-C6-W4-" + "+".join(map(str, s)) for s in SPLITS])
def test_state_carry_equals_one_call(splits):
    inputs = make_inputs(2, 17, 6, 4, state=True, seed=4)
    y_full, s_full = causal_conv1d(**inputs, output_final_state=True)
    state, ys, start = inputs["conv_state"], [], 0
    for length in splits:
        part = inputs | {"x": inputs["x"][:, start:start + length], "conv_state": state}
        y, state = causal_conv1d(**part, output_final_state=True)
        ys.append(y)
        start += length
    assert_close(torch.cat(ys, dim=1), y_full, name="y")
    assert_close(state, s_full, name="state")


def test_token_by_token_decode():
    inputs = make_inputs(3, 8, 6, 4, state=False, seed=6)
    y_full, s_full = causal_conv1d(**inputs, output_final_state=True)
    state, ys = None, []
    with torch.no_grad():
        for t in range(8):
            step = inputs | {"x": inputs["x"][:, t:t + 1], "conv_state": state}
            y, state = causal_conv1d(**step, output_final_state=True)
            ys.append(y)
    assert_close(torch.cat(ys, dim=1), y_full, name="y")
    assert_close(state, s_full, name="state")


def test_bf16_keeps_dtype():
    inputs = make_inputs(2, 9, 6, 4, state=True, dtype=torch.bfloat16)
    y, s = causal_conv1d(**inputs, output_final_state=True)
    y_ref, s_ref = naive_causal_conv1d(**inputs, output_final_state=True)
    assert y.dtype == s.dtype == torch.bfloat16
    assert_close(y, y_ref, name="y")
    assert torch.equal(s, s_ref)


def test_bad_arguments_raise():
    inputs = make_inputs(2, 5, 6, 4, state=False)
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(**inputs, activation="gelu")
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d(**inputs | {"conv_state": torch.zeros(2, 6, 4)})


def test_matches_transformers_mamba2_conv_helpers():
    """transformers' torch conv helpers (channel-major), unwrapped from their kernel hooks."""
    from transformers.models.mamba2 import modeling_mamba2

    conv_fn = inspect.unwrap(modeling_mamba2.causal_conv1d_fn)
    conv_update = inspect.unwrap(modeling_mamba2.causal_conv1d_update)
    inputs = make_inputs(2, 11, 6, 4, state=False, seed=8)
    x, weight, bias = inputs["x"], inputs["weight"], inputs["bias"]

    y_ref = conv_fn(x.transpose(1, 2), weight, bias, activation="silu").transpose(1, 2)
    y, state = causal_conv1d(x[:, :10], weight, bias, output_final_state=True)
    assert_close(y, y_ref[:, :10], name="prefill")

    # Their update shifts a state of any length in place; give it ours (W - 1 inputs).
    hf_state = state.clone()
    y_step_ref = conv_update(x[:, 10:].transpose(1, 2), hf_state, weight, bias, activation="silu").transpose(1, 2)
    y_step, state = causal_conv1d(x[:, 10:], weight, bias, conv_state=state, output_final_state=True)
    assert_close(y_step, y_step_ref, name="decode y")
    assert_close(y_step, y_ref[:, 10:], name="decode y vs full")
    assert_close(state, hf_state, name="decode state")


# --- CUDA: fla's Triton kernels against the torch path --------------------------------------------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def require_fla():
    # The GPU tests check the fast path itself: without it they must fail, not pass by skipping.
    assert backend.has_module("fla.modules.causal_conv1d"), "fla.modules.causal_conv1d does not import (pip install 'hylo-search[gpu]')"


GPU_CASES = [(4096, True), (1000, True), (1000, False), (2, True), (64, False)]


@pytest.mark.parametrize(
    "seqlen,state", GPU_CASES, ids=[f"B2-T{t}-C1536-W4-{'state' if s else 'zero'}" for t, s in GPU_CASES]
)
@pytest.mark.gpu
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to the torch path fails
@cuda_only
def test_fast_matches_torch_bf16(seqlen, state):
    require_fla()
    inputs = make_inputs(2, seqlen, 1536, 4, state=state, seed=10, device="cuda", dtype=torch.bfloat16)

    def run(choice):
        def fn(**kw):
            with backend.force_backend(choice):
                return causal_conv1d(**kw, output_final_state=True)
        return run_with_grads(fn, inputs)

    y_ref, s_ref, g_ref = run("torch")
    y, s, g = run("fast")
    assert y.dtype == s.dtype == torch.bfloat16 and s.shape == s_ref.shape
    assert s.is_contiguous() and s_ref.is_contiguous()
    assert rel_err(y, y_ref) < 5e-3, rel_err(y, y_ref)
    assert torch.equal(s, s_ref)
    for name in g_ref:
        assert rel_err(g[name], g_ref[name]) < 1e-2, (name, rel_err(g[name], g_ref[name]))


@pytest.mark.parametrize("state", [False, True], ids=["zero-state", "state"])
@pytest.mark.gpu
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to the torch path fails
@cuda_only
def test_fast_decode_matches_torch_bf16(state):
    require_fla()
    inputs = make_inputs(2, 5, 1536, 4, state=state, seed=12, device="cuda", dtype=torch.bfloat16)
    original_state = None if inputs["conv_state"] is None else inputs["conv_state"].clone()
    with torch.no_grad():
        with backend.force_backend("torch"):
            y_ref, s_ref = causal_conv1d(**inputs, output_final_state=True)
        with backend.force_backend("fast"):
            conv_state, ys = inputs["conv_state"], []
            for t in range(5):
                step = inputs | {"x": inputs["x"][:, t:t + 1], "conv_state": conv_state}
                y, conv_state = causal_conv1d(**step, output_final_state=True)
                ys.append(y)
    assert rel_err(torch.cat(ys, dim=1), y_ref) < 5e-3
    assert torch.equal(conv_state, s_ref) and conv_state.is_contiguous()
    if original_state is not None:
        assert torch.equal(inputs["conv_state"], original_state), "the caller's state was modified in place"
