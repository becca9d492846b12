"""Upcycling Llama / Qwen2 / Qwen3 teachers (tiny, built locally) into HyLo students."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hylo_model import Layout, sanity_check, save_upcycled, upcycle
from hylo_model.upcycle import layer_reconstruction
from hylo_model.upcycle.llama import LLAMA
from tests.helpers import tiny_teacher

FAMILIES = ["llama", "qwen2", "qwen3"]
IDS = torch.randint(0, 97, (2, 30), generator=torch.Generator().manual_seed(3))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module", params=FAMILIES)
def teacher(request):
    return tiny_teacher(request.param)


@torch.no_grad()
def test_all_attention_reproduces_teacher(teacher):
    student = upcycle(teacher, "A,A,A,A")
    # The teacher's own weights through the same float32 ops: equal to the bit (measured difference 0.0).
    assert torch.equal(student(IDS, use_cache=False).logits, teacher(IDS).logits)
    assert student.config.tie_word_embeddings == teacher.config.tie_word_embeddings
    if student.config.tie_word_embeddings:
        assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    for i, layer in enumerate(teacher.model.layers):
        assert torch.equal(student.model.layers[i].mixer.q_proj.weight, layer.self_attn.q_proj.weight)
        assert torch.equal(student.model.layers[i].mlp.down_proj.weight, layer.mlp.down_proj.weight)


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_norm_eps_is_kept_bit_for_bit(family):
    """Llama-3 uses rms_norm_eps 1e-5, not the default 1e-6: the all-attention student is the teacher to the bit
    (a student left at 1e-6 is 1.4e-3..3.0e-3 off in the logits), and every norm of a mixed student uses it."""
    teacher = tiny_teacher(family, rms_norm_eps=1e-5)
    student = upcycle(teacher, "A,A,A,A")
    assert student.config.rms_norm_eps == 1e-5
    assert torch.equal(student(IDS, use_cache=False).logits, teacher(IDS).logits)
    mixed = upcycle(teacher, "A,L16,M,G", qk_rope_head_dim=8)
    eps = {name: getattr(m, "variance_epsilon", getattr(m, "eps", None)) for name, m in mixed.named_modules()
           if type(m).__name__ in ("RMSNorm", "GatedRMSNorm")}
    assert eps["model.norm"] == eps["model.layers.2.mixer.norm"] == 1e-5
    assert set(eps.values()) == {1e-5}, eps


@torch.no_grad()
@pytest.mark.parametrize("q_lora_rank", [None, 64])
def test_full_rank_mla_with_all_rotary_dims_reproduces_teacher(teacher, q_lora_rank):
    heads_kv, head_dim = teacher.config.num_key_value_heads, teacher.config.head_dim
    student = upcycle(teacher, "L,L,L,L", qk_rope_head_dim=head_dim, mla_rope_heads=heads_kv,
                      kv_lora_rank=heads_kv * head_dim, q_lora_rank=q_lora_rank)
    want = teacher(IDS).logits
    # Logits up to 1.75 in size; measured max |diff| <= 1.25e-6 (prefill) and <= 9.4e-7 (absorbed decode step).
    assert (student(IDS, use_cache=False).logits - want).abs().max().item() <= 5e-6
    # The absorbed decode over the latent cache gives the same logits.
    cache = student.new_cache()
    student(IDS[:, :-1], cache=cache, use_cache=True)
    step = student(IDS[:, -1:], cache=cache, use_cache=True).logits
    assert (step[:, 0] - want[:, -1]).abs().max().item() <= 5e-6


@torch.no_grad()
def test_mla_error_rises_as_rank_falls(teacher):
    heads_kv, head_dim = teacher.config.num_key_value_heads, teacher.config.head_dim
    want = teacher(IDS).logits
    errors = []
    for rank in (heads_kv * head_dim, 24, 16, 8):
        student = upcycle(teacher, "L,L,L,L", qk_rope_head_dim=head_dim, mla_rope_heads=heads_kv, kv_lora_rank=rank)
        errors.append(_rel(student(IDS, use_cache=False).logits, want))
    print(f"\n{teacher.config.model_type}: logits rel. error at ranks 32/24/16/8: {[round(e, 4) for e in errors]}")
    assert errors[0] < 3e-6  # full rank: measured <= 6.1e-7
    assert all(a < b for a, b in zip(errors, errors[1:]))


@torch.no_grad()
def test_deepseek_style_mla_runs_from_teacher(teacher):
    """The cheap setting a search uses: one shared RoPE key, partial RoPE, low rank."""
    student = upcycle(teacher, "A,L16,L8,A", qk_rope_head_dim=8, kv_lora_rank=16)
    logits = student(IDS, use_cache=False).logits
    assert torch.isfinite(logits).all()
    assert student.config.mla_rope_pairs[1] is not None and len(student.config.mla_rope_pairs[1]) == 4
    assert student.model.layers[2].mixer.kv_lora_rank == 8


@pytest.fixture(scope="module")
def trained_teacher():
    """A tiny Llama trained for a few seconds on repeated random segments, so its attention has structure."""
    torch.manual_seed(0)
    teacher = tiny_teacher("llama", std=0.02).train()
    optimizer = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    for _ in range(300):
        half = torch.randint(0, 97, (16, 32))
        batch = torch.cat([half, half], dim=1)
        loss = teacher(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return teacher.eval()


@pytest.mark.slow
@pytest.mark.parametrize("mixer", ["M", "G"])
def test_linear_mixers_from_attention_beat_random_init(trained_teacher, mixer):
    torch.manual_seed(1)
    half = torch.randint(0, 97, (4, 32))
    ids = torch.cat([half, half], dim=1)
    layout = ",".join([mixer] * 4)
    upcycled = layer_reconstruction(upcycle(trained_teacher, layout), trained_teacher, ids)
    random = layer_reconstruction(upcycle(trained_teacher, layout, init="random"), trained_teacher, ids)
    print(f"\n{mixer} per-layer rel. error  upcycled {[round(r.relative_error, 3) for r in upcycled]}"
          f"  random {[round(r.relative_error, 3) for r in random]}")
    print(f"{mixer} per-layer cosine      upcycled {[round(r.cosine, 3) for r in upcycled]}"
          f"  random {[round(r.cosine, 3) for r in random]}")
    for up, rnd in zip(upcycled, random):
        assert up.finite and up.cosine > rnd.cosine
    mean = lambda rows: sum(r.relative_error for r in rows) / len(rows)  # noqa: E731
    assert mean(upcycled) < mean(random)


@torch.no_grad()
def test_deterministic_given_seed(teacher):
    a = upcycle(teacher, "A,L16,M,G", seed=7, qk_rope_head_dim=8)
    b = upcycle(teacher, "A,L16,M,G", seed=7, qk_rope_head_dim=8)
    c = upcycle(teacher, "A,L16,M,G", seed=8, qk_rope_head_dim=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.layers.2.mixer.A_log"], sc["model.layers.2.mixer.A_log"])


def _tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=97, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


@torch.no_grad()
def test_directory_teacher_round_trip(tmp_path):
    teacher = tiny_teacher("qwen3")
    teacher_dir = tmp_path / "teacher"
    teacher.save_pretrained(teacher_dir)
    _tiny_tokenizer().save_pretrained(teacher_dir)

    from_dir = upcycle(str(teacher_dir), "A,L16,M,G", qk_rope_head_dim=8)
    from_obj = upcycle(teacher, "A,L16,M,G", qk_rope_head_dim=8)
    assert all(torch.equal(v, from_obj.state_dict()[k]) for k, v in from_dir.state_dict().items())

    out = save_upcycled(from_dir, tmp_path / "student")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.equal(loaded(IDS, use_cache=False).logits, from_dir(IDS, use_cache=False).logits)
    text = "the lazy dog"
    assert AutoTokenizer.from_pretrained(out)(text).input_ids == AutoTokenizer.from_pretrained(teacher_dir)(text).input_ids
    provenance = json.loads((out / "config.json").read_text())["hylo_provenance"]
    assert provenance["teacher"] == str(teacher_dir)
    assert provenance["layout"] == "A,L16,M,G" and provenance["teacher_family"] == "qwen3"
    assert len(provenance["teacher_fingerprint"]) == 64 and provenance["hylo_version"]


@torch.no_grad()
def test_sanity_check_passes_and_reports_each_layer():
    teacher = tiny_teacher("qwen2")
    report = sanity_check(upcycle(teacher, "A,L16,M,G", qk_rope_head_dim=8), teacher, IDS)
    assert report.ok and report.parity_max_abs_diff == 0.0  # the all-attention student is the teacher to the bit
    assert [r.mixer for r in report.layers] == ["attention", "mla", "mamba2", "gdn"]
    assert report.layers[0].relative_error == 0.0  # the attention layer is the teacher's own
    assert all(r.relative_error > 1e-3 for r in report.layers[1:])
    assert "mamba2" in report.table()


@torch.no_grad()
def test_sanity_check_catches_a_broken_key_map(monkeypatch):
    teacher = tiny_teacher("llama")
    student = upcycle(teacher, "A,A,A,A")
    gate, up = "model.layers.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.up_proj.weight"
    monkeypatch.setitem(LLAMA.layer_dense_keys, gate, up)
    monkeypatch.setitem(LLAMA.layer_dense_keys, up, gate)
    report = sanity_check(student, teacher, IDS)
    assert not report.ok and "key map" in report.failures()[0]
    with pytest.raises(RuntimeError, match="sanity check failed"):
        report.raise_for_failures()


def test_unsupported_teacher_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match=r"unsupported teacher architecture 'gpt2'.*LlamaForCausalLM.*Qwen3ForCausalLM"):
        upcycle(gpt2, "A,A")


def test_bad_layouts_and_ranks_are_named(teacher):
    with pytest.raises(ValueError, match="has 3 layers but the model has 4"):
        upcycle(teacher, "A,A,A")
    with pytest.raises(ValueError, match=r"layer 2: unknown mixer 'X'"):
        upcycle(teacher, "A,A,X,A")
    with pytest.raises(ValueError, match=r"layer 1: kv_lora_rank 999 is out of range"):
        upcycle(teacher, "A,L999,A,A")
    with pytest.raises(ValueError, match=r"kv_lora_rank 40 exceeds what the teacher's K/V allow \(max 32"):
        upcycle(teacher, "A,L40,A,A", qk_rope_head_dim=16)
    with pytest.raises(ValueError, match="rope_pairs 'best' is unknown; allowed: qk_norm"):
        upcycle(teacher, "A,L8,A,A", rope_pairs="best")
    with pytest.raises(ValueError, match="qk_rope_head_dim must be even"):
        upcycle(teacher, "A,L8,A,A", qk_rope_head_dim=7)
    with pytest.raises(TypeError, match="teacher must be"):
        upcycle(3, "A,A,A,A")
    with pytest.raises(ValueError, match="no model.safetensors"):
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as empty:
            teacher.config.save_pretrained(empty)
            upcycle(Path(empty), "A,A,A,A")
    assert str(Layout.parse("A,L8*2,G")) == "A,L8,L8,G"


def test_upcycle_command(tmp_path, capsys):
    from hylo_search.cli import main

    teacher = tiny_teacher("qwen2")
    teacher.save_pretrained(tmp_path / "teacher")
    out = tmp_path / "student"
    assert main(["upcycle", str(tmp_path / "teacher"), "--layout", "A,L16,M,G", "--qk-rope-head-dim", "8",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "all-attention parity" in printed and "mamba2" in printed
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        want = upcycle(teacher, "A,L16,M,G", qk_rope_head_dim=8)(IDS, use_cache=False).logits
        assert torch.equal(loaded(IDS, use_cache=False).logits, want)

    assert main(["upcycle", str(tmp_path / "teacher"), "--layout", "A,X,M,G", "--out", str(tmp_path / "bad")]) == 2
    assert "layer 1: unknown mixer 'X'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_teacher_fingerprint_is_the_teachers_alone(tmp_path):
    teacher = tiny_teacher("qwen3")
    teacher.save_pretrained(tmp_path / "t")
    a = upcycle(teacher, "A,L16,M,G", qk_rope_head_dim=8).config.hylo_provenance["teacher_fingerprint"]
    b = upcycle(str(tmp_path / "t"), "G,G,A,A").config.hylo_provenance["teacher_fingerprint"]
    assert a == b
    other = tiny_teacher("qwen3", seed=1)
    assert upcycle(other, "A,A,A,A").config.hylo_provenance["teacher_fingerprint"] != a
