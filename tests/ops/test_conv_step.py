"""The one-token convolution step (decode) against the general convolution, and on CUDA its Triton kernel against
the PyTorch form; the lean decode steps of Gated DeltaNet and Mamba2 on CUDA against their float32 reference."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from hylo_model import HyLoCache
from hylo_model.ops import backend
from hylo_model.ops.conv import causal_conv1d_torch, conv_step, conv_step_group, conv_step_torch
from tests.helpers import tiny_model


def _inputs(batch, channels, width, *, bias, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    packed = torch.randn(batch, 1, channels + 7, generator=gen)  # x is a strided slice, as from a packed GEMM
    return dict(
        x=packed[..., 3 : 3 + channels].to(device=device, dtype=dtype),
        state=torch.randn(batch, channels, width - 1, generator=gen).to(device=device, dtype=dtype),
        weight=torch.randn(channels, width, generator=gen).to(device=device, dtype=dtype),
        bias=torch.randn(channels, generator=gen).to(device=device, dtype=dtype) if bias else None,
    )


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", [(1, 300, 4), (3, 64, 4), (2, 70, 2)], ids=lambda s: "B{}-C{}-W{}".format(*s))
def test_step_equals_general_convolution(shape, bias):
    batch, channels, width = shape
    args = _inputs(batch, channels, width, bias=bias)
    ref_y, ref_state = causal_conv1d_torch(args["x"], args["weight"], args["bias"], "silu", args["state"], True)
    y, state = conv_step(args["x"], args["state"], args["weight"], args["bias"])
    assert torch.equal(y, ref_y) and torch.equal(state, ref_state)
    held = args["state"].clone()
    y2, state2 = conv_step(args["x"], held, args["weight"], args["bias"], in_place=True)
    assert state2 is held and torch.equal(held, ref_state) and torch.equal(y2, ref_y)


def test_step_rejects_wrong_shapes():
    args = _inputs(2, 8, 4, bias=False)
    with pytest.raises(ValueError, match=r"state \[B, C, W - 1\] = \(2, 8, 3\)"):
        conv_step(args["x"], args["state"][:, :, :2], args["weight"])


def _group_inputs(batch, widths, *, dtype=torch.float32, device="cpu"):
    """Strided slices of one packed projection (as GDN's q, k, v), with their states and weights."""
    gen = torch.Generator().manual_seed(1)
    packed = torch.randn(batch, 1, sum(widths) + 5, generator=gen).to(device=device, dtype=dtype)
    starts = [sum(widths[:i]) for i in range(len(widths))]
    xs = [packed[..., s : s + c] for s, c in zip(starts, widths)]
    states = [torch.randn(batch, c, 3, generator=gen).to(device=device, dtype=dtype) for c in widths]
    weights = [torch.randn(c, 4, generator=gen).to(device=device, dtype=dtype) for c in widths]
    return xs, states, weights


def _assert_group_equals_singles(xs, states, weights):
    expected = [conv_step(x, s, w) for x, s, w in zip(xs, states, weights)]
    held = [s.clone() for s in states]
    for in_place, kept in ((False, [s.clone() for s in states]), (True, held)):
        got = conv_step_group(xs, kept, weights, in_place=in_place)
        for (y, state), (ref_y, ref_state), old in zip(got, expected, kept):
            assert torch.equal(y, ref_y) and torch.equal(state, ref_state) and (state is old) == in_place


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_group_step_equals_single_steps(batch, count):
    xs, states, weights = _group_inputs(batch, [64, 64, 96][:count])
    _assert_group_equals_singles(xs, states, weights)


def test_group_step_rejects_more_than_three():
    xs, states, weights = _group_inputs(1, [8, 8, 8, 8])
    with pytest.raises(ValueError, match="one to three tensors"):
        conv_step_group(xs, states, weights)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 8])
def test_triton_group_step_equals_single_triton_steps(batch, dtype):
    """One launch for q, k and v (GDN's widths at the Qwen3-1.7B shape): each tensor's output and state equal
    the single-tensor kernel's to the bit, in place or not."""
    xs, states, weights = _group_inputs(batch, [2048, 1024, 4096], dtype=dtype, device="cuda")
    with backend.force_backend("fast"):
        _assert_group_equals_singles(xs, states, weights)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 2048, 4), (8, 6144, 4), (3, 70, 2)], ids=lambda s: "B{}-C{}-W{}".format(*s))
def test_triton_step_matches_torch(shape, dtype):
    batch, channels, width = shape
    args = _inputs(batch, channels, width, bias=True, dtype=dtype, device="cuda")
    ref_y, ref_state = conv_step_torch(args["x"], args["state"], args["weight"], args["bias"])
    with backend.force_backend("fast"):
        y, state = conv_step(args["x"], args["state"], args["weight"], args["bias"])
        held = args["state"].clone()
        y2, _ = conv_step(args["x"], held, args["weight"], args["bias"], in_place=True)
    torch.cuda.synchronize()
    assert torch.equal(state, ref_state) and torch.equal(held, ref_state) and torch.equal(y, y2)
    rel = ((y.float() - ref_y.float()).norm() / ref_y.float().norm()).item()
    assert rel < (1e-6 if dtype == torch.float32 else 1e-2), rel  # bf16: one rounding of the output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("layout", ["G,G", "M,M"])
@torch.no_grad()
def test_cuda_decode_steps_match_float32_reference(layout):
    """bf16 decode steps on the fast path (packed projections, Triton conv step, fla's gates in its kernel) against
    the float32 PyTorch path of the same model, over 8 steps after a 40-token prefill."""
    reference = tiny_model(layout).cuda()
    fast = copy.deepcopy(reference).to(torch.bfloat16)
    prompt = torch.randint(1, 97, (2, 40), generator=torch.Generator().manual_seed(0)).cuda()
    tokens = torch.randint(1, 97, (2, 8), generator=torch.Generator().manual_seed(1)).cuda()
    outputs = []
    for model, path in ((reference, "torch"), (fast, "auto")):
        with backend.force_backend(path):
            cache = HyLoCache(model.config)
            model(prompt, cache=cache, use_cache=True)
            outputs.append(torch.cat([model(tokens[:, i : i + 1], cache=cache, use_cache=True).logits
                                      for i in range(tokens.shape[1])], dim=1).float())
    rel = ((outputs[1] - outputs[0]).norm() / outputs[0].norm()).item()
    print(f"\n{layout}: bf16 fast decode vs float32 reference, relative error {rel:.2e}")
    assert rel < 2e-2


def _linear_states(cache: HyLoCache) -> dict[str, torch.Tensor]:
    return {f"{i}.{name}": t for i, entry in enumerate(cache.layers) if cache.is_linear[i] for name, t in entry.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@torch.no_grad()
def test_prefill_leaves_contiguous_states(dtype):
    """After a prefill and after eager decode steps, every Mamba2/GDN state in the cache is contiguous: the decode
    step's Triton kernel takes only contiguous states, and a static step (what ``generate`` replays) updates them in
    place, so a strided state would send every step to the PyTorch convolution (on an H100 it did: 1,232 kernels
    per replayed step)."""
    model = tiny_model("G,M").to(dtype)
    cache = HyLoCache(model.config, max_length=64)
    model(torch.randint(1, 97, (2, 13)), cache=cache, use_cache=True)
    for step in range(3):  # and after eager decode steps
        states = _linear_states(cache)
        assert len(states) == 6 and all(t.is_contiguous() for t in states.values()), (step, {
            name: t.stride() for name, t in states.items()})
        model(torch.randint(1, 97, (2, 1)), cache=cache, use_cache=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a conv step falling back to PyTorch fails
@pytest.mark.parametrize("layout", ["G,G", "M,M"])
@torch.no_grad()
def test_cuda_generate_takes_the_triton_conv_step(layout):
    """``generate`` on CUDA (prefill through fla, then captured static steps) leaves contiguous states and never
    falls back to the PyTorch convolution step (which warns)."""
    model = tiny_model(layout).cuda().to(torch.bfloat16)
    prompt = torch.randint(1, 97, (2, 40), generator=torch.Generator().manual_seed(0)).cuda()
    model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    cache = model._generation_graphs()._kept[0]
    assert all(t.is_contiguous() for t in _linear_states(cache).values())


def test_fallback_warns_once_and_raises_when_forced(monkeypatch):
    """A CUDA call that cannot take its kernel falls back loudly: one RuntimeWarning per op and reason (what the GPU
    tests turn into an error), and an error naming the reason when the fast path was forced."""
    monkeypatch.setattr(backend, "_warned", set())
    with pytest.warns(RuntimeWarning, match="conv_step: the state is strided, running the pure-PyTorch path"):
        backend.fallback("conv_step", "the state is strided")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend.fallback("conv_step", "the state is strided")  # said once already: silent
    with backend.force_backend("fast"), pytest.raises(RuntimeError, match="forced but the state is strided"):
        backend.fallback("conv_step", "the state is strided")
