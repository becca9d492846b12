"""HyLo through transformers' public API: what ``generate`` refuses, attention weights and the eager path, tuple
outputs, dynamic RoPE, torch.compile / torch.export of a masked forward, AutoModel loading, both cache keywords."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from hylo_model import HyLoCache, HyLoForCausalLM
from hylo_model.layers import common
from hylo_model.layers.common import RopeFrequencies, rope_cos_sin
from hylo_model.model import CACHE_FIELD
from tests.helpers import tiny_config, tiny_model

ATTENTION_STYLE = 2  # A and L24 in the mixed layout; M and G return no weights


def padded_batch(seq_len: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows, the first left-padded by 3 tokens."""
    ids = torch.randint(0, 97, (2, seq_len), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, seq_len, dtype=torch.long)
    mask[0, :3] = 0
    return ids, mask


def count_forwards(model: HyLoForCausalLM) -> list[int]:
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("kwargs", [{"prompt_lookup_num_tokens": 2}, {"assistant_model": "draft"}],
                         ids=["prompt-lookup", "assisted"])
def test_assisted_generation_is_refused_before_any_forward(kwargs):
    model = tiny_model()
    if kwargs.get("assistant_model") == "draft":
        kwargs = {"assistant_model": tiny_model(seed=1)}
    ids, mask = padded_batch()
    calls = count_forwards(model)
    with pytest.raises(ValueError, match="does not support assisted generation or prompt-lookup decoding"):
        model.generate(ids[1:], attention_mask=mask[1:], max_new_tokens=3, do_sample=False, **kwargs)
    assert not calls


def test_unsupported_cache_implementation_is_refused():
    model = tiny_model()
    ids, mask = padded_batch()
    with pytest.raises(ValueError, match="cache_implementation='offloaded' is not supported; allowed: None, "
                                         "'dynamic', 'static'"):
        model.generate(ids, attention_mask=mask, max_new_tokens=2, cache_implementation="offloaded")


def test_output_attentions_from_attention_and_mla_layers():
    model = tiny_model()
    ids, mask = padded_batch()
    out = model(ids, attention_mask=mask, output_attentions=True)
    assert len(out.attentions) == ATTENTION_STYLE
    causal = torch.ones(9, 9, dtype=torch.bool).tril()
    for weights in out.attentions:
        assert weights.shape == (2, 4, 9, 9)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 9))
        # Real queries see no later key and no padded one (a padded query sees every key, to stay finite).
        assert not weights[1][:, ~causal].any() and not weights[0, :, 3:][:, ~causal[3:]].any()
        assert not weights[0, :, 3:, :3].any()
    # The weights come from the eager form; the logits are those of the SDPA path.
    torch.testing.assert_close(out.logits, model(ids, attention_mask=mask).logits, atol=1e-5, rtol=1e-5)

    # A cached one-token step (MLA's absorbed form) gives the last row of the full weights.
    cache = model.new_cache()
    model(ids[:, :-1], attention_mask=mask[:, :-1], cache=cache)
    step = model(ids[:, -1:], attention_mask=mask, cache=cache, output_attentions=True)
    for step_weights, full_weights in zip(step.attentions, out.attentions, strict=True):
        torch.testing.assert_close(step_weights, full_weights[:, :, -1:], atol=1e-6, rtol=1e-5)


def test_eager_attn_implementation_is_honoured_and_unknown_ones_refused(monkeypatch):
    model = tiny_model()
    eager = HyLoForCausalLM._from_config(copy.deepcopy(model.config), attn_implementation="eager").eval()
    eager.load_state_dict(model.state_dict())
    calls = []
    original = common.eager_attention
    monkeypatch.setattr(common, "eager_attention", lambda *a: calls.append(1) or original(*a))
    ids, mask = padded_batch()
    torch.testing.assert_close(eager(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits,
                               atol=1e-5, rtol=1e-5)
    assert len(calls) == ATTENTION_STYLE  # only the eager model went through it
    with pytest.raises(ValueError, match="does not support Flash Attention 2"):
        HyLoForCausalLM._from_config(model.config, attn_implementation="flash_attention_2")


def test_return_dict_false_returns_tuples():
    model = tiny_model()
    ids, mask = padded_batch()
    as_dict = model(ids, attention_mask=mask, labels=ids, use_cache=False)
    loss, logits = model(ids, attention_mask=mask, labels=ids, use_cache=False, return_dict=False)
    assert torch.equal(loss, as_dict.loss) and torch.equal(logits, as_dict.logits)
    (hidden,) = model.model(ids, attention_mask=mask, use_cache=False, return_dict=False)
    assert torch.equal(model.lm_head(hidden), as_dict.logits)
    model.config.return_dict = False
    assert isinstance(model(ids, use_cache=False), tuple)


def dynamic_config(**overrides):
    rope = {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0}
    return tiny_config(max_position_embeddings=16, rope_parameters=rope, **overrides)


@pytest.mark.parametrize("length", [12, 16, 40])
def test_dynamic_rope_matches_transformers(length):
    config = dynamic_config()
    positions = torch.arange(length)[None]
    cos, sin = RopeFrequencies.of(config).cos_sin(positions, torch.float32)
    inv_freq, scaling = ROPE_INIT_FUNCTIONS["dynamic"](config, torch.device("cpu"), seq_len=length)
    expected = rope_cos_sin(inv_freq, scaling, positions, torch.float32)
    torch.testing.assert_close((cos, sin), expected, atol=2e-6, rtol=0)
    if length <= 16:  # up to max_position_embeddings dynamic RoPE is plain RoPE, exactly
        default = tiny_config(max_position_embeddings=16)
        assert torch.equal(cos, RopeFrequencies.of(default).cos_sin(positions, torch.float32)[0])


def test_dynamic_rope_applies_to_attention_and_mla_layers():
    pairs = [None, [0, 2, 5, 7], None, None]
    torch.manual_seed(0)
    dynamic = HyLoForCausalLM(dynamic_config(mla_rope_pairs=pairs)).eval()
    plain = HyLoForCausalLM(tiny_config(max_position_embeddings=16, mla_rope_pairs=pairs)).eval()
    plain.load_state_dict(dynamic.state_dict())
    short, long = torch.randint(0, 97, (1, 16)), torch.randint(0, 97, (1, 40))
    assert torch.equal(dynamic(short).logits, plain(short).logits)
    assert not torch.allclose(dynamic(long).logits, plain(long).logits, atol=1e-4)
    # The MLA layer's pairs scale with the same exponents as the full grid's.
    mla_cos = dynamic.model.layers[1].mixer.rope.cos_sin(torch.arange(40)[None], torch.float32)[0]
    full_cos = dynamic.model.rope.cos_sin(torch.arange(40)[None], torch.float32)[0]
    torch.testing.assert_close(mla_cos[..., :4], full_cos[..., [0, 2, 5, 7]])


def test_compiled_masked_forward_has_no_graph_break():
    torch._dynamo.reset()
    model = tiny_model()
    ids, mask = padded_batch()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    # With the cache: it is built, filled and returned inside the graph too.
    torch.testing.assert_close(compiled(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)


def test_torch_export_of_a_masked_forward_returns_a_cache():
    model = tiny_model()
    ids, mask = padded_batch()
    inputs = {"input_ids": ids, "attention_mask": mask, "use_cache": True}
    exported = torch.export.export(model, (), inputs).module()
    out, reference = exported(**inputs), model(**inputs)
    torch.testing.assert_close(out.logits, reference.logits)
    cache = getattr(out, CACHE_FIELD)
    assert isinstance(cache, HyLoCache) and cache.get_seq_length() == ids.shape[1]
    # The exported prefill's cache continues an eager decode exactly as the eager prefill's does.
    step = torch.randint(0, 97, (2, 1))
    step_mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(step, attention_mask=step_mask, cache=cache).logits,
                               model(step, attention_mask=step_mask, cache=getattr(reference, CACHE_FIELD)).logits)


def test_auto_classes_load_a_saved_folder(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    ids, _ = padded_batch()
    base = AutoModel.from_pretrained(tmp_path).eval()
    assert type(base).__name__ == "HyLoModel"
    torch.testing.assert_close(base(ids).last_hidden_state, model.model(ids).last_hidden_state)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)) is HyLoForCausalLM


@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
def test_forward_takes_the_cache_under_either_name(keyword):
    model = tiny_model()
    ids, _ = padded_batch()
    cache = model.new_cache()
    model(ids[:, :-1], **{keyword: cache})
    out = model(ids[:, -1:], **{keyword: cache})
    assert getattr(out, CACHE_FIELD) is cache and cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(out.logits[:, -1], model(ids, use_cache=False).logits[:, -1], atol=1e-5, rtol=1e-5)


def test_longrope_is_refused_when_the_config_is_made():
    rope = {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8,
            "original_max_position_embeddings": 256}
    with pytest.raises(ValueError, match="rope_parameters.rope_type: 'longrope' is not supported"):
        tiny_config(rope_parameters=rope)
