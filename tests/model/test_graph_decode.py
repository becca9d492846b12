"""Static decode steps (what :class:`GraphDecoder` captures in CUDA graphs) against the ordinary eager decode.

On the CPU the decoder runs its static step eagerly: one token per sequence written at a device-side position into
the preallocated cache, attention over a fixed bucket of key slots with the unwritten ones masked, linear states
written in place. Invariants: the same logits as the eager decode (float32, see ``LOGITS_ATOL``), the same greedy
tokens, and a cache an eager forward can continue from. The ``gpu`` tests capture and replay the graphs in bf16.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hylo_model import GraphDecoder, HyLoCache
from hylo_model.graphs import default_buckets
from hylo_model.ops import backend
from tests.helpers import MIXED_LAYOUT, tiny_model

# float32: a masked slot gets exactly zero weight, but the softmax sums run over the bucket's slots instead of the
# held keys (another reduction length and order), and past 1024 keys the eager decode takes the key-blocked online
# softmax on the CPU where the static step calls SDPA: a few float32 ulps of the logits (|logit| < 1 here), measured
# <= 2.4e-7 over these cases; 2e-6 leaves room for another CPU's kernels. Layouts without attention or MLA run the
# same ops either way and are held bitwise equal.
LOGITS_ATOL = 2e-6
PROMPT, STEPS, MAX_LENGTH = 13, 30, 64
BUCKETS = (16, 32)  # with max_length 64: the greedy steps (contexts 13..42) read 16, 32 and 64 slots

# (layout, config overrides): every mixer alone and the four together; attention with grouped heads (sdpa folds
# them into the query axis) and without (MHA); MLA with one shared RoPE key (R1) and with two (R2).
CASES = [("A,A", {}), ("A,A", {"num_key_value_heads": 4}), ("L24,L16", {}), ("L24,L16", {"mla_rope_heads": 2}),
         ("M,M", {}), ("G,G", {}), (MIXED_LAYOUT, {}), (MIXED_LAYOUT, {"mla_rope_heads": 2})]


def _case_id(case) -> str:
    layout, overrides = case
    return layout + ("-MHA" if "num_key_value_heads" in overrides else "") + f"-R{overrides.get('mla_rope_heads', 1)}"


def _prompt(batch: int, length: int = PROMPT) -> torch.Tensor:
    return torch.randint(0, 97, (batch, length), generator=torch.Generator().manual_seed(batch + length))


def _prefill(model, prompt: torch.Tensor, max_length: int) -> tuple[HyLoCache, torch.Tensor]:
    cache = HyLoCache(model.config, max_length=max_length)
    logits = model(prompt, cache=cache, use_cache=True, logits_to_keep=1).logits
    return cache, logits


def _eager_greedy(model, cache: HyLoCache, token: torch.Tensor, steps: int):
    """Greedy decode through the ordinary forward: (logits per step [B, steps, V], tokens [B, steps])."""
    logits, tokens = [], []
    for _ in range(steps):
        out = model(token, cache=cache, use_cache=True).logits
        token = out.argmax(-1)
        logits.append(out)
        tokens.append(token)
    return torch.cat(logits, dim=1), torch.cat(tokens, dim=1)


def _decoder_greedy(decoder: GraphDecoder, token: torch.Tensor, steps: int):
    logits, tokens = [], []
    for _ in range(steps):
        out = decoder.step(token)
        token = out.argmax(-1)
        logits.append(out)
        tokens.append(token)
    return torch.cat(logits, dim=1), torch.cat(tokens, dim=1)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _assert_same_cache(a: HyLoCache, b: HyLoCache, atol: float) -> None:
    assert a.get_seq_length() == b.get_seq_length()
    assert a.nbytes() == b.nbytes()
    for layer, (entry_a, entry_b) in enumerate(zip(a.layers, b.layers)):
        assert entry_a.keys() == entry_b.keys()
        for name in entry_a:
            assert entry_a[name].shape == entry_b[name].shape, (layer, name)
            assert _max_diff(entry_a[name], entry_b[name]) < atol, (layer, name)


@pytest.mark.parametrize("batch", [1, 2], ids=["B1", "B2"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
@torch.no_grad()
def test_static_decode_equals_eager_decode(case, batch):
    layout, overrides = case
    model = tiny_model(layout, **overrides)
    prompt = _prompt(batch)
    eager_cache, first = _prefill(model, prompt, MAX_LENGTH)
    static_cache, _ = _prefill(model, prompt, MAX_LENGTH)
    decoder = GraphDecoder(model, static_cache, buckets=BUCKETS)
    assert not decoder.use_graphs and decoder.buckets == [16, 32, 64]

    token = first.argmax(-1)
    eager_logits, eager_tokens = _eager_greedy(model, eager_cache, token, STEPS)
    static_logits, static_tokens = _decoder_greedy(decoder, token, STEPS)
    assert eager_logits.abs().max() > 0.1
    assert _max_diff(static_logits, eager_logits) < LOGITS_ATOL
    if all(mixer in ("mamba2", "gdn") for mixer in model.config.layer_mixers):
        assert torch.equal(static_logits, eager_logits)
    assert torch.equal(static_tokens, eager_tokens)
    _assert_same_cache(static_cache, eager_cache, LOGITS_ATOL)
    assert static_cache.get_seq_length() == PROMPT + STEPS

    # The cache carries on eagerly after static steps (one token, then three at once), and static steps carry on
    # after eager ones.
    next_token = eager_tokens[:, -1:]
    block = _prompt(batch, 3)
    after = [model(ids, cache=c, use_cache=True).logits for c in (eager_cache, static_cache) for ids in
             (next_token, block)]
    assert _max_diff(after[2], after[0]) < LOGITS_ATOL and _max_diff(after[3], after[1]) < LOGITS_ATOL
    again = decoder.greedy(block[:, -1:], 2)
    assert torch.equal(again, _eager_greedy(model, eager_cache, block[:, -1:], 2)[1])
    _assert_same_cache(static_cache, eager_cache, LOGITS_ATOL)


@torch.no_grad()
def test_static_decode_past_one_key_block():
    """From 1020 to 1028 tokens: past 1024 keys the eager decode attends key-blocked on the CPU, the static step
    through SDPA over the bucket; buckets 1024 and max_length."""
    model = tiny_model(MIXED_LAYOUT)
    prompt = _prompt(1, 1020)
    eager_cache, first = _prefill(model, prompt, 1040)
    static_cache, _ = _prefill(model, prompt, 1040)
    token = first.argmax(-1)
    eager_logits, eager_tokens = _eager_greedy(model, eager_cache, token, 8)
    static_logits, static_tokens = _decoder_greedy(GraphDecoder(model, static_cache, buckets=[1024]), token, 8)
    assert _max_diff(static_logits, eager_logits) < LOGITS_ATOL
    assert torch.equal(static_tokens, eager_tokens)
    _assert_same_cache(static_cache, eager_cache, LOGITS_ATOL)


@torch.no_grad()
def test_greedy_equals_steps():
    model = tiny_model(MIXED_LAYOUT)
    prompt = _prompt(2)
    cache_a, first = _prefill(model, prompt, MAX_LENGTH)
    cache_b = copy.deepcopy(cache_a)
    token = first.argmax(-1)
    greedy = GraphDecoder(model, cache_a, buckets=BUCKETS).greedy(token, 20)
    assert greedy.shape == (2, 20)
    assert torch.equal(greedy, _decoder_greedy(GraphDecoder(model, cache_b, buckets=BUCKETS), token, 20)[1])


@torch.no_grad()
def test_unwritten_slots_are_zeroed():
    """``new_empty`` buffers may hold NaN; a masked score would not stop ``0 * NaN`` in the value sum."""
    model = tiny_model(MIXED_LAYOUT)
    cache, first = _prefill(model, _prompt(1), MAX_LENGTH)
    for buffers in cache._buffers:
        for buffer in buffers.values():
            buffer.narrow(-2 if buffer.dim() == 4 else 1, PROMPT, MAX_LENGTH - PROMPT).fill_(float("nan"))
    logits = GraphDecoder(model, cache, buckets=BUCKETS).step(first.argmax(-1))
    assert torch.isfinite(logits).all()


@torch.no_grad()
def test_cache_position_and_adoption():
    """The position tensor follows the tokens held; an eager forward's new states are copied back into the tensors
    a graph would have captured; a reset invalidates them."""
    model = tiny_model(MIXED_LAYOUT)
    cache, first = _prefill(model, _prompt(1), MAX_LENGTH)
    position = cache.prepare_static()
    assert position.tolist() == [PROMPT]
    bound = cache.static_tensors()
    assert (-1, "position") in bound and (1, "latent_pe") in bound and (3, "recurrent") in bound
    version = cache.version
    with cache.static_step(16):
        model(first.argmax(-1), cache=cache, use_cache=True)
    assert cache.version == version and cache.get_seq_length() == PROMPT + 1 and position.tolist() == [PROMPT + 1]
    assert all(cache.static_tensors()[key] is tensor for key, tensor in bound.items())

    model(first.argmax(-1), cache=cache, use_cache=True)  # eager: linear states are new tensors
    assert cache.version != version and cache.state(3)["recurrent"] is not bound[3, "recurrent"]
    new_state = cache.state(3)["recurrent"].clone()
    assert cache.adopt_static(bound)
    assert cache.state(3)["recurrent"] is bound[3, "recurrent"] and torch.equal(bound[3, "recurrent"], new_state)
    assert cache.prepare_static() is position and position.tolist() == [PROMPT + 2]

    cache.reset()
    model(_prompt(1), cache=cache, use_cache=True)
    assert not cache.adopt_static(bound)
    assert cache.prepare_static() is position  # kept across reset


def test_default_buckets():
    assert default_buckets(3000) == [3000]
    assert default_buckets(4096) == [4096]
    assert default_buckets(40_000) == [4096, 8192, 16384, 32768, 40_000]


@torch.no_grad()
def test_clear_errors():
    model = tiny_model(MIXED_LAYOUT)
    with pytest.raises(ValueError, match="max_length"):
        GraphDecoder(model, HyLoCache(model.config))
    with pytest.raises(ValueError, match="max_length=64"):
        GraphDecoder(model, HyLoCache(model.config, max_length=64), buckets=[80])
    with pytest.raises(ValueError, match="holds 0 tokens"):
        GraphDecoder(model, HyLoCache(model.config, max_length=64)).step(torch.zeros(1, 1, dtype=torch.long))

    cache, first = _prefill(model, _prompt(2), MAX_LENGTH)
    decoder = GraphDecoder(model, cache, buckets=BUCKETS)
    with pytest.raises(ValueError, match="batch 1, the cache holds batch 2"):
        decoder.step(first[:1].argmax(-1))
    with pytest.raises(ValueError, match=r"\[batch, 1\]"):
        decoder.step(_prompt(2, 2))
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    with pytest.raises(ValueError, match="cache holds torch.float32 activations, the model computes in torch.bfloat16"):
        GraphDecoder(bf16, cache, buckets=BUCKETS).step(first.argmax(-1))
    # The cache's own check, should a step get past the decoder's.
    with pytest.raises(ValueError, match="layer 0 key holds batch 2 in torch.float32, the step brings .*bfloat16"):
        with cache.static_step(16):
            bf16(first.argmax(-1), cache=cache, use_cache=True)
    assert cache.get_seq_length() == PROMPT  # the failed steps counted nothing

    full, _ = _prefill(model, _prompt(1, MAX_LENGTH), MAX_LENGTH)
    with pytest.raises(ValueError, match="context 64 \\+ 1 token exceeds HyLoCache\\(max_length=64\\)"):
        GraphDecoder(model, full).step(torch.zeros(1, 1, dtype=torch.long))


# ---------------------------------------------------------------------------------------------------------- CUDA
# Replay == the same static step run eagerly: the same kernels on the same inputs, so bitwise equal unless cuBLAS or
# SDPA picked another algorithm inside the capture; bounded by 1 % of the largest |value| (a few bf16 ulps, 2^-8).
REPLAY_RTOL = 1e-2
# Static step vs the ordinary decode in bf16: other attention kernels (masked memory-efficient vs flash) and reduction
# lengths. The tiny model's top two logits are often close (median gap ~20 % of the largest |logit|), so a greedy
# token may differ only where the ordinary decode's gap is below this fraction of its largest |logit|.
BF16_TIE = 5e-2


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return _max_diff(a, b) / max(b.float().abs().max().item(), 1e-12)


def _first_mismatch_is_a_tie(tokens: torch.Tensor, reference: torch.Tensor, reference_logits: torch.Tensor) -> bool:
    """True when ``tokens`` == ``reference``, or where they first differ the reference's top two logits (in the rows
    that differ) are within ``BF16_TIE`` of its largest |logit|."""
    if torch.equal(tokens, reference):
        return True
    step = int((tokens != reference).any(0).nonzero()[0])
    logits = reference_logits[:, step].float()
    top2 = logits.topk(2, dim=-1).values
    gap = (top2[:, 0] - top2[:, 1]) / logits.abs().amax(-1)
    return bool((gap[tokens[:, step] != reference[:, step]] < BF16_TIE).all())


def _static_steps(decoder: GraphDecoder, tokens: torch.Tensor) -> torch.Tensor:
    """Feed ``tokens`` ``[B, n]`` one step at a time; logits ``[B, n, V]``."""
    return torch.cat([decoder.step(tokens[:, i : i + 1]) for i in range(tokens.shape[1])], dim=1)


@pytest.mark.gpu
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to the torch path fails
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("path", ["fast", "torch"])
@pytest.mark.parametrize("rope_heads", [1, 2], ids=["R1", "R2"])
@pytest.mark.parametrize("batch", [1, 2], ids=["B1", "B2"])
@torch.no_grad()
def test_cuda_graph_replay_equals_static_step(path, rope_heads, batch):
    """bf16 on CUDA, fla's kernels ("fast") or the torch ops: replayed graphs == the eager static step, greedy
    tokens == the ordinary decode (but for bf16 near-ties), and an eager forward between graph steps is fine."""
    model = tiny_model(MIXED_LAYOUT, mla_rope_heads=rope_heads).cuda().to(torch.bfloat16)
    with backend.force_backend(path):
        graph_cache, first = _prefill(model, _prompt(batch).cuda(), MAX_LENGTH)
        static_cache, eager_cache = copy.deepcopy(graph_cache), copy.deepcopy(graph_cache)
        graphs = GraphDecoder(model, graph_cache, buckets=BUCKETS)
        static = GraphDecoder(model, static_cache, buckets=BUCKETS, use_graphs=False)
        assert graphs.use_graphs
        token = first.argmax(-1)

        graph_logits, graph_tokens = _decoder_greedy(graphs, token, STEPS)
        assert graphs.captured == [16, 32, 64]
        fed = torch.cat([token, graph_tokens[:, :-1]], dim=1)
        errors = [_rel_diff(graph_logits, _static_steps(static, fed))]
        eager_logits, eager_tokens = _eager_greedy(model, eager_cache, token, STEPS)
        assert _first_mismatch_is_a_tie(graph_tokens, eager_tokens, eager_logits)

        # An eager 3-token forward on both caches replaces the linear states; the graphs take them back.
        block = _prompt(batch, 3).cuda()
        after = [model(block, cache=c, use_cache=True).logits for c in (graph_cache, static_cache)]
        errors.append(_rel_diff(*after))
        more = torch.cat([block[:, -1:], block.flip(0)], dim=1)
        errors.append(_rel_diff(_static_steps(graphs, more), _static_steps(static, more)))
        assert graphs.captured == [16, 32, 64]  # nothing captured again
        assert graph_cache.get_seq_length() == static_cache.get_seq_length() == PROMPT + STEPS + 3 + 4
        assert graph_cache.nbytes() == static_cache.nbytes()
        reference = static_cache.static_tensors()  # every buffer, state and the position
        errors += [_rel_diff(tensor, reference[key]) for key, tensor in graph_cache.static_tensors().items()]
    print(f"\n{path} R{rope_heads} B{batch}: replay vs eager static step, largest |diff| / largest |value| "
          f"{max(errors):.2e}")
    assert max(errors) <= REPLAY_RTOL


@pytest.mark.gpu
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a fallback to the torch path fails
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@torch.no_grad()
def test_static_step_has_no_host_sync():
    """After warm-up (Triton autotuning synchronises), an eager static step on CUDA makes no synchronising call,
    which a graph capture could not hold; this names the call where a capture error would not."""
    model = tiny_model(MIXED_LAYOUT).cuda().to(torch.bfloat16)
    with backend.force_backend("fast"):
        cache, first = _prefill(model, _prompt(1).cuda(), MAX_LENGTH)
        decoder = GraphDecoder(model, cache, buckets=BUCKETS, use_graphs=False)
        token = decoder.greedy(first.argmax(-1), 2)[:, -1:]
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            decoder.step(token)
        finally:
            torch.cuda.set_sync_debug_mode("default")
