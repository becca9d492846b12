"""Gradient values against float64 references: MLA against transformers' DeepseekV3Attention run in float64, and a
model mixing all four mixers against the same model run in float64, both by autograd and by central differences
(which would catch a gradient path cut by a stray ``detach`` or ``no_grad``, where autograd in both runs would not).

Relative error = ||ours - ref|| / ||ref|| per tensor. Our layers compute norms, RoPE and recurrent states in
float32 even on float64 inputs, so the float64 runs are float64 everywhere else; the bounds sit a few times above
what was measured on an x86-64 CPU with torch 2.13.0+cpu (2026-12-06), given beside each.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hylo_model.layers.common import AttentionMask
from hylo_model.ops import backend
from tests.helpers import MIXED_LAYOUT, tiny_model
from tests.model.test_cross_check import _deepseek_forward, _hidden, _mla_pair

MLA_GRAD_RTOL = 3e-6  # measured <= 6.0e-7 (q_full and q_lora32, every weight and the input)
MODEL_GRAD_RTOL = 1e-5  # measured <= 1.8e-6 over the 52 parameters (largest: layer 2 Mamba2's D)
CENTRAL_DIFF_RTOL = 1e-3  # measured 1.4e-5..2.5e-4 (step 1e-4; the objective carries float32 rounding)


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.double() - ref.double()).norm() / ref.double().norm()).item()


@pytest.mark.parametrize("q_lora_rank", [None, 32], ids=["q_full", "q_lora32"])
def test_mla_gradients_match_deepseek_v3_in_float64(q_lora_rank):
    """Our MLA (float32, torch path) against DeepseekV3Attention (float64, eager): gradients of the input and of
    every weight, through a random linear function of the output."""
    _, ours, ref, rotary = _mla_pair(q_lora_rank)
    ref = ref.double()
    x = _hidden(11, 2, 29, ours.o_proj.out_features)
    pos = torch.arange(5, 34)[None]
    weights = torch.randn(2, 29, ours.o_proj.out_features, generator=torch.Generator().manual_seed(12))

    x32 = x.clone().requires_grad_()
    with backend.force_backend("torch"):
        (ours(x32, position_ids=pos, attention_mask=AttentionMask(None), cache=None) * weights).sum().backward()
    x64 = x.double().requires_grad_()
    (_deepseek_forward(ref, rotary, x64, pos) * weights.double()).sum().backward()

    ref_grads = dict(ref.named_parameters())
    errors = {"input": _rel(x32.grad, x64.grad)}
    for name, param in ours.named_parameters():
        assert param.grad is not None and ref_grads[name].grad is not None, name
        errors[name] = _rel(param.grad, ref_grads[name].grad)
    print("\nMLA grad rel. errors vs float64: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert len(errors) == 1 + len(ref_grads)
    assert max(errors.values()) < MLA_GRAD_RTOL, errors


@pytest.fixture(scope="module")
def mixed_runs():
    """The mixed layout in float32 and in float64 (same weights), each with the gradients of one random linear
    function of the logits; the float64 model is returned for central differences."""
    model32 = tiny_model(MIXED_LAYOUT).train()
    model64 = copy.deepcopy(model32).double()
    ids = torch.randint(0, 97, (2, 37), generator=torch.Generator().manual_seed(4))
    weights = torch.randn(2, 37, 97, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def objective(model):
        return (model(ids, use_cache=False).logits.double() * weights).sum()

    with backend.force_backend("torch"):
        objective(model32).backward()
        objective(model64).backward()
    return model32, model64, objective


def test_mixed_layout_gradients_match_a_float64_run(mixed_runs):
    model32, model64, _ = mixed_runs
    grads64 = {name: p.grad for name, p in model64.named_parameters()}
    errors = {}
    for name, param in model32.named_parameters():
        assert param.grad is not None and grads64[name] is not None, name
        assert grads64[name].abs().max() > 0, f"{name}: zero gradient, the comparison would be vacuous"
        errors[name] = _rel(param.grad, grads64[name])
    worst = max(errors, key=errors.get)
    print(f"\n{len(errors)} parameters, largest grad rel. error vs float64: {errors[worst]:.2e} ({worst})")
    assert errors[worst] < MODEL_GRAD_RTOL, {k: v for k, v in errors.items() if v >= MODEL_GRAD_RTOL}


@pytest.mark.parametrize("layer", range(len(MIXED_LAYOUT.split(","))))
@torch.no_grad()
def test_mixed_layout_gradients_match_central_differences(mixed_runs, layer):
    """Along a random direction in one mixer's weights, the float32 autograd gradient equals the float64 central
    difference of the objective."""
    model32, model64, objective = mixed_runs
    prefix = f"model.layers.{layer}.mixer."
    params = {name: p for name, p in model64.named_parameters() if name.startswith(prefix)}
    gen = torch.Generator().manual_seed(10 + layer)
    direction = {name: torch.randn(p.shape, generator=gen, dtype=torch.float64) for name, p in params.items()}
    grads32 = {name: p.grad for name, p in model32.named_parameters()}
    autograd = sum((grads32[name].double() * d).sum() for name, d in direction.items()).item()

    step, values = 1e-4, []
    with backend.force_backend("torch"):
        for sign in (1, -1):
            for name, p in params.items():
                p.add_(sign * step * direction[name])
            values.append(objective(model64).item())
            for name, p in params.items():
                p.sub_(sign * step * direction[name])
    central = (values[0] - values[1]) / (2 * step)
    error = abs(central - autograd) / abs(autograd)
    print(f"\nlayer {layer} ({model32.config.layer_mixers[layer]}): autograd {autograd:.8g}, "
          f"central difference {central:.8g}, rel. error {error:.2e}")
    assert error < CENTRAL_DIFF_RTOL
