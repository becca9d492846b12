"""``generate`` through static steps (what CUDA graphs replay on CUDA) against the ordinary eager ``generate``.

On the CPU, ``cache_implementation="static"`` runs the same static step eagerly: a preallocated cache sized for the
request, one token per sequence written at a device-side position, attention over a fixed bucket of key slots. The
invariants: the same tokens (greedy, sampled under one seed, stopped at an end token) and the same scores as the
eager decode; steps that cannot be static (padding, beam search) fall back with one log line and still agree; a
second call reuses the kept cache. The ``gpu`` test replays the captured graphs in bf16.
"""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from transformers import GenerationMixin

from hylo_model import HyLoCache
from hylo_model.graphs import GraphDecoder
from hylo_model.layers.packed import PackedLinears
from tests.helpers import MIXED_LAYOUT, tiny_model
from tests.model.test_graph_decode import CASES, LOGITS_ATOL, _case_id, _first_mismatch_is_a_tie

NEW_TOKENS = 20


@pytest.fixture
def static_steps(monkeypatch):
    """Counts the static steps ``generate`` takes."""
    calls = []
    step = GraphDecoder.step

    def counted(self, tokens):
        calls.append(tokens.shape)
        return step(self, tokens)

    monkeypatch.setattr(GraphDecoder, "step", counted)
    return calls


def _prompt(batch: int, length: int = 13) -> torch.Tensor:
    # Token 0 is the pad token: prompts without it are unpadded.
    return torch.randint(1, 97, (batch, length), generator=torch.Generator().manual_seed(batch + length))


def _generate(model, prompt, **kwargs):
    kwargs = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "pad_token_id": 0, **kwargs}
    return model.generate(prompt, **kwargs)


@pytest.mark.parametrize("batch", [1, 2], ids=["B1", "B2"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
@torch.no_grad()
def test_static_generate_equals_eager_generate(case, batch, static_steps):
    layout, overrides = case
    model = tiny_model(layout, **overrides)
    prompt = _prompt(batch)
    scored = {"return_dict_in_generate": True, "output_logits": True}
    eager = _generate(model, prompt, **scored)
    assert not static_steps  # off CUDA, generate decodes eagerly unless asked
    static = _generate(model, prompt, cache_implementation="static", **scored)
    assert len(static_steps) == NEW_TOKENS - 1
    assert torch.equal(static.sequences, eager.sequences)
    eager_logits, static_logits = torch.stack(eager.logits), torch.stack(static.logits)
    assert eager_logits.abs().max() > 0.1
    assert (static_logits - eager_logits).abs().max() < LOGITS_ATOL
    assert isinstance(static.cache, HyLoCache) and static.cache.max_length == prompt.shape[1] + NEW_TOKENS - 1


@torch.no_grad()
def test_sampling_and_stopping_through_static_steps(static_steps):
    model = tiny_model(MIXED_LAYOUT)
    prompt = _prompt(2)
    sampled = []
    for implementation in (None, "static"):
        torch.manual_seed(5)
        sampled.append(_generate(model, prompt, do_sample=True, top_k=20, temperature=0.7,
                                 cache_implementation=implementation))
    assert torch.equal(*sampled) and len(static_steps) == NEW_TOKENS - 1

    greedy = _generate(model, prompt[:1])
    stop = int(greedy[0, prompt.shape[1] + 4])  # the fifth new token ends the sequence
    stopped = [_generate(model, prompt[:1], eos_token_id=stop, cache_implementation=implementation)
               for implementation in (None, "static")]
    assert torch.equal(*stopped) and stopped[0].shape[1] <= prompt.shape[1] + 5


@torch.no_grad()
def test_kept_cache_is_reused_and_resized(static_steps):
    model = tiny_model(MIXED_LAYOUT)
    graphs = model._generation_graphs()
    first = _generate(model, _prompt(2), cache_implementation="static")
    cache, decoder, _ = graphs._kept
    again = _generate(model, _prompt(2), cache_implementation="static")
    assert torch.equal(first, again) and graphs._kept[0] is cache and graphs._kept[1] is decoder
    longer = _generate(model, _prompt(2, 30), cache_implementation="static")
    assert graphs._kept[0] is not cache and graphs._kept[0].max_length == 30 + NEW_TOKENS - 1
    assert torch.equal(longer, _generate(model, _prompt(2, 30)))
    shorter = _generate(model, _prompt(2, 5), cache_implementation="static")
    assert graphs._kept[0].max_length == 30 + NEW_TOKENS - 1  # the larger cache serves the shorter request
    assert torch.equal(shorter, _generate(model, _prompt(2, 5)))
    model.release_generation_graphs()
    assert graphs._kept is None


@torch.no_grad()
def test_user_cache_is_decoded_by_static_steps(static_steps):
    model = tiny_model(MIXED_LAYOUT)
    prompt = _prompt(1)
    cache = HyLoCache(model.config, max_length=64)
    out = _generate(model, prompt, cache=cache)
    assert len(static_steps) == NEW_TOKENS - 1 and cache.get_seq_length() == prompt.shape[1] + NEW_TOKENS - 1
    assert torch.equal(out, _generate(model, prompt))


@torch.no_grad()
def test_steps_that_cannot_be_static_fall_back_with_one_log_line(static_steps, caplog):
    model = tiny_model(MIXED_LAYOUT)
    prompt = _prompt(2)
    mask = torch.ones_like(prompt)
    mask[0, :4] = 0
    with caplog.at_level(logging.INFO, logger="hylo_model.generation"):
        for _ in range(2):
            padded = _generate(model, prompt, attention_mask=mask, cache_implementation="static")
        beams = _generate(model, prompt, num_beams=2, cache_implementation="static")
        opted_out = _generate(model, prompt, cache_implementation="static", disable_compile=True)
    assert not static_steps
    assert torch.equal(padded, _generate(model, prompt, attention_mask=mask))
    assert torch.equal(beams, _generate(model, prompt, num_beams=2))
    assert torch.equal(opted_out, _generate(model, prompt))
    messages = [r.getMessage() for r in caplog.records if r.name == "hylo_model.generation"]
    assert len(messages) == 3, messages
    assert "padded" in messages[0] and "beam_search" in messages[1] and "disable_compile" in messages[2]


@pytest.mark.parametrize("implementation", [None, "static"], ids=["dynamic", "static"])
@torch.no_grad()
def test_chunked_prefill_equals_one_prefill(implementation, static_steps, caplog):
    """transformers' ``prefill_chunk_size`` feeds the prompt in chunks through the model on the request's cache,
    then decodes as usual: the same tokens and, within float32 rounding, the same scores as one prefill, with the
    static steps still serving the decode and no log line (a prefill chunk is not a decode step that fell back)."""
    model = tiny_model(MIXED_LAYOUT)
    prompt = _prompt(2, 45)
    scored = {"return_dict_in_generate": True, "output_logits": True, "cache_implementation": implementation}
    whole = _generate(model, prompt, **scored)
    steps_whole = len(static_steps)
    with caplog.at_level(logging.INFO, logger="hylo_model.generation"):
        chunked = _generate(model, prompt, prefill_chunk_size=16, **scored)  # 16 + 16 + 13 tokens
    assert len(static_steps) - steps_whole == steps_whole == (NEW_TOKENS - 1 if implementation else 0)
    assert not [r for r in caplog.records if r.name == "hylo_model.generation"]
    assert torch.equal(chunked.sequences, whole.sequences)
    whole_logits, chunked_logits = torch.stack(whole.logits), torch.stack(chunked.logits)
    assert whole_logits.abs().max() > 0.1
    assert (chunked_logits - whole_logits).abs().max() < LOGITS_ATOL


@pytest.mark.parametrize("implementation", [None, "static"], ids=["dynamic", "static"])
@torch.no_grad()
def test_static_steps_skip_transformers_input_preparation(implementation, static_steps, monkeypatch):
    """A decode step the static decoder serves reads only the last token and the cache, so transformers' generic
    ``prepare_inputs_for_generation`` (host work between one token's sync and the next launch) runs for the
    prefill alone; eager decoding keeps it for every step."""
    calls = []
    generic = GenerationMixin.prepare_inputs_for_generation

    @functools.wraps(generic)  # its signature names the cache argument, which HyLo reads
    def counted(self, *args, **kwargs):
        calls.append(1)
        return generic(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "prepare_inputs_for_generation", counted)
    _generate(tiny_model(MIXED_LAYOUT), _prompt(2), cache_implementation=implementation)
    assert len(static_steps) == (NEW_TOKENS - 1 if implementation else 0)
    assert len(calls) == (1 if implementation else NEW_TOKENS)


def test_packed_projections_keep_names_and_follow_updates():
    """The fused GEMM reads the parameters' own memory: same names and values, in-place updates seen, a replaced
    parameter repacked; gradients still reach each parameter."""
    model = tiny_model(MIXED_LAYOUT)
    names = [name for name, _ in model.named_parameters()]
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    gdn = model.model.layers[3].mixer
    x = torch.randn(2, 1, model.config.hidden_size)
    with torch.no_grad():
        packed = gdn._inputs(x)
        separate = [layer(x) for layer in gdn._inputs._linears]
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(packed, separate))
        weight, _ = gdn._inputs.packed()
        assert weight.data_ptr() == gdn.q_proj.weight.data_ptr() and weight.shape[0] == sum(gdn._inputs.sizes)
        gdn.k_proj.weight.mul_(2)  # an in-place update lands in the packed buffer
        assert torch.allclose(gdn._inputs(x)[1], gdn.k_proj(x), atol=1e-6)
        gdn.v_proj.weight = torch.nn.Parameter(gdn.v_proj.weight.detach().clone() * 3)  # replaced: repacked
        assert torch.allclose(gdn._inputs(x)[2], gdn.v_proj(x), atol=1e-6)
    assert [name for name, _ in model.named_parameters()] == names
    assert model.state_dict().keys() == before.keys()
    gdn._inputs(x)[0].sum().backward()
    assert gdn.q_proj.weight.grad is not None and gdn.k_proj.weight.grad is None


def test_packed_linears_reject_mixed_biases():
    with pytest.raises(ValueError, match="all have a bias or all have none"):
        PackedLinears([torch.nn.Linear(4, 3), torch.nn.Linear(4, 2, bias=False)])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("batch", [1, 3], ids=["B1", "B3"])
@torch.no_grad()
def test_cuda_generate_replays_graphs(batch, static_steps):
    """bf16 on CUDA: default ``generate`` captures and replays graphs; its tokens equal the eager ``generate``'s
    (``disable_compile=True``) but for bf16 near-ties, its scores agree within bf16 rounding, and a second call
    replays without capturing again."""
    model = tiny_model(MIXED_LAYOUT).cuda().to(torch.bfloat16)
    prompt = _prompt(batch).cuda()
    scored = {"return_dict_in_generate": True, "output_logits": True}
    eager = _generate(model, prompt, disable_compile=True, **scored)
    assert not static_steps
    graphed = _generate(model, prompt, **scored)
    assert len(static_steps) == NEW_TOKENS - 1
    assert len(graphed.logits) == NEW_TOKENS
    eager_logits, graph_logits = torch.stack(eager.logits, 1), torch.stack(graphed.logits, 1)
    new = eager.sequences[:, prompt.shape[1]:]
    assert _first_mismatch_is_a_tie(graphed.sequences[:, prompt.shape[1]:], new, eager_logits)
    if torch.equal(graphed.sequences, eager.sequences):
        rel = (graph_logits - eager_logits).abs().max() / eager_logits.abs().max()
        print(f"\nB{batch}: graph vs eager generate, largest |diff| / largest |logit| {rel:.2e}")
        assert rel < 5e-2

    first = _generate(model, prompt)
    graphs = model._generation_graphs()
    decoder = graphs._kept[1]
    captured = decoder.captured
    assert decoder.use_graphs and captured
    assert torch.equal(_generate(model, prompt), first) and graphs._kept[1] is decoder and decoder.captured == captured
