"""Model-level invariants, written once and run for every mixer and for a layout mixing all four."""

from __future__ import annotations

import pytest
import torch

from hylo_model import HyLoCache
from tests.helpers import MIXED_LAYOUT, tiny_model

LAYOUTS = ["A,A", "L24,L16", "M,M", "G,G", MIXED_LAYOUT]
# Largest measured |diff| of float32 logits over these invariants: 4.8e-7 (x86-64 CPU, torch 2.13.0+cpu).
ATOL = 2e-6


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=LAYOUTS)
def model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(0, 97, (2, 41), generator=torch.Generator().manual_seed(1))


@torch.no_grad()
def test_token_by_token_decode_equals_full_forward(model, tokens):
    full = model(tokens, use_cache=False).logits
    cache = model.new_cache()
    steps = [model(tokens[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(tokens.shape[1])]
    assert cache.get_seq_length() == tokens.shape[1]
    assert _max_diff(torch.cat(steps, dim=1), full) < ATOL


@torch.no_grad()
def test_multi_token_cached_step_equals_single_steps(model, tokens):
    prefix, block = tokens[:, :20], tokens[:, 20:27]
    cache_a = model.new_cache()
    model(prefix, cache=cache_a, use_cache=True)
    multi = model(block, cache=cache_a, use_cache=True).logits
    cache_b = model.new_cache()
    model(prefix, cache=cache_b, use_cache=True)
    singles = torch.cat(
        [model(block[:, t : t + 1], cache=cache_b, use_cache=True).logits for t in range(block.shape[1])], dim=1
    )
    assert _max_diff(multi, singles) < ATOL


@torch.no_grad()
@pytest.mark.parametrize("segment", [1, 7, 16, 33])
def test_segmented_forward_equals_whole(model, tokens, segment):
    full = model(tokens, use_cache=False).logits
    cache = model.new_cache()
    parts = [
        model(tokens[:, s : s + segment], cache=cache, use_cache=True).logits
        for s in range(0, tokens.shape[1], segment)
    ]
    assert _max_diff(torch.cat(parts, dim=1), full) < ATOL


@torch.no_grad()
def test_causal(model, tokens):
    changed = tokens.clone()
    changed[:, 30:] = (changed[:, 30:] + 5) % 97
    a = model(tokens, use_cache=False).logits
    b = model(changed, use_cache=False).logits
    assert _max_diff(a[:, :30], b[:, :30]) == 0.0
    assert _max_diff(a[:, 30:], b[:, 30:]) > 1e-4


@torch.no_grad()
def test_left_padded_batch_equals_unpadded(model, tokens):
    short = tokens[1:, :25]
    alone = model(short, use_cache=False).logits
    pad = 16
    padded = torch.cat([torch.zeros(1, pad, dtype=torch.long), short], dim=1)
    batch = torch.cat([tokens[:1, : pad + 25], padded], dim=0)
    mask = torch.ones_like(batch)
    mask[1, :pad] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(batch, attention_mask=mask, position_ids=positions, use_cache=False).logits
    assert torch.isfinite(out).all()
    assert _max_diff(out[1, pad:], alone[0]) < ATOL
    assert _max_diff(out[0], model(tokens[:1, : pad + 25], use_cache=False).logits[0]) < ATOL


@torch.no_grad()
def test_logits_to_keep(model, tokens):
    full = model(tokens, use_cache=False).logits
    last = model(tokens, use_cache=False, logits_to_keep=1).logits
    assert last.shape == (2, 1, 97)
    assert _max_diff(last[:, 0], full[:, -1]) < ATOL


@torch.no_grad()
def test_hidden_states(model, tokens):
    out = model(tokens, use_cache=False, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, 41, 64) for h in out.hidden_states)


def test_gradients_flow_to_every_parameter(model, tokens):
    model.zero_grad()
    out = model(tokens[:, :20], labels=tokens[:, :20], use_cache=False)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    model.zero_grad()


@torch.no_grad()
def test_generate_uses_hybrid_cache(model, tokens):
    prompt = tokens[:1, :12]
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert generated.shape == (1, 18)
    # Greedy decoding with the cache equals greedy decoding by full forwards.
    seq = prompt
    for _ in range(6):
        next_token = model(seq, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        seq = torch.cat([seq, next_token], dim=1)
    assert torch.equal(generated, seq)


@torch.no_grad()
def test_cache_bytes_matches_real_cache(model):
    for dtype in (torch.float32,):
        for length in (13, 40):
            cache = HyLoCache(model.config)
            model(torch.randint(0, 97, (3, length)), cache=cache, use_cache=True)
            for i in range(model.config.num_hidden_layers):
                from hylo_model import layer_cache_bytes

                assert cache.layer_nbytes(i) == layer_cache_bytes(model.config, i, length, 3, dtype)
            assert cache.nbytes() == model.cache_bytes(length, batch_size=3, dtype=dtype)
    linear = [i for i, m in enumerate(model.config.layer_mixers) if m in ("mamba2", "gdn")]
    from hylo_model import layer_cache_bytes

    for i in linear:
        assert layer_cache_bytes(model.config, i, 10) == layer_cache_bytes(model.config, i, 100_000)


@torch.no_grad()
def test_preallocated_cache_equals_growing_cache(model, tokens):
    full = model(tokens, use_cache=False).logits
    cache = HyLoCache(model.config, max_length=tokens.shape[1])
    parts = [model(tokens[:, s : s + 16], cache=cache, use_cache=True).logits for s in range(0, tokens.shape[1], 16)]
    assert _max_diff(torch.cat(parts, dim=1), full) < ATOL
    assert cache.nbytes() == model.cache_bytes(tokens.shape[1], batch_size=2, dtype=torch.float32)
    assert cache.allocated_nbytes() >= cache.nbytes()
    if any(m in ("attention", "mla") for m in model.config.layer_mixers):
        with pytest.raises(ValueError, match="is full"):
            model(tokens[:, :1], cache=cache, use_cache=True)


@torch.no_grad()
def test_chained_blocks_equal_block_by_block(model, tokens):
    """Without gradients the blocks run chained (each block's last residual add fused with the next norm); on the
    CPU the result is the block-by-block forward's to the bit. A hook on a block turns the chaining off, so the
    hook sees every block's output (that is the block-by-block reference here), as do gradients."""
    seen = []
    handle = model.model.layers[-1].register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        assert not model.model._chain_blocks()
        reference = model(tokens, use_cache=False).logits
    finally:
        handle.remove()
    assert len(seen) == 1
    assert model.model._chain_blocks()
    assert torch.equal(model(tokens, use_cache=False).logits, reference)
    with torch.enable_grad():
        assert not model.model._chain_blocks()
