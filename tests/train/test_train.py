"""The trainer on the tiny teacher: the stages do their job, the loss curve matches the golden file, an interrupted
run resumes bit-exactly, a NaN stops the stage keeping the last good checkpoint, only the named groups train."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from hylo_model import upcycle
from hylo_model.train import NonFiniteLossError, RunMismatchError, load_recipe, run_recipe
from hylo_model.train.stages import DistillObjective, next_token_labels, parameter_groups
from hylo_model.train.trainer import enable_checkpointing
from tests.helpers import tiny_model, tiny_teacher
from tests.train.conftest import LAYOUT, final_weights, same_weights

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "losses" / "tiny.txt"


class Interrupt(Exception):
    pass


def test_align_lowers_every_layer_and_distill_lowers_held_out_kl(golden_run):
    _, result = golden_run
    align, distill, long = result.stages
    before, after = align.eval_before["layer_loss"], align.eval_after["layer_loss"]
    print("\nheld-out per-layer reconstruction loss (MSE of the mixer vs the teacher's attention output)")
    for layer in sorted(before):
        print(f"  layer {layer}: {before[layer]:.5f} -> {after[layer]:.5f}")
    print(f"held-out KL(teacher||student): align {align.eval_before['kl']:.4f} -> {align.eval_after['kl']:.4f}, "
          f"distill {distill.eval_before['kl']:.4f} -> {distill.eval_after['kl']:.4f}, "
          f"long@64 {long.eval_before['kl']:.4f} -> {long.eval_after['kl']:.4f}")
    assert sorted(before) == [1, 2, 3]  # the converted layers: MLA, Mamba2, GDN
    assert all(after[i] < before[i] for i in before)
    assert distill.eval_after["kl"] < 0.7 * distill.eval_before["kl"]
    assert long.eval_after["kl"] < long.eval_before["kl"]
    assert result.heldout_kl == long.eval_after["kl"] and result.losses["distill"] == distill.losses


# The file keeps 8 significant digits (rounding error <= 5e-9 relative). Measured drift of a rerun against it:
# 2.7e-8 relative on the machine that wrote it; 2.41e-6 (long stage, step 3; <= 1.9e-7 in align and distill) on a
# 2-core x86-64 CPU with torch 2.13.0+cpu, 2026-12-06. A change to the training maths moves the curve by 1e-4 or
# more; the old bound, 1e-3, let small ones through.
GOLDEN_RTOL = 1e-5


def _read_golden() -> list[tuple[str, int, float]]:
    rows = [line.split() for line in GOLDEN.read_text().splitlines() if line and not line.startswith("#")]
    return [(name, int(step), float(loss)) for name, step, loss in rows]


def _largest_change(old: list[tuple[str, int, float]], new: list[tuple[str, int, float]]) -> str:
    if [r[:2] for r in old] != [r[:2] for r in new]:
        return "the steps changed"
    return f"{max(abs(b[2] - a[2]) / abs(a[2]) for a, b in zip(old, new)):.3g} relative"


def test_losses_match_the_golden_file(golden_run):
    _, result = golden_run
    rows = [(s.name, step + 1, loss) for s in result.stages for step, loss in enumerate(s.losses)]
    if os.environ.get("HYLO_UPDATE_GOLDEN"):
        # Update mode writes the file and refuses to compare: a run compared with the file it just wrote would
        # pass whatever it computed. It reports the change from the previous file, for the commit message.
        previous = _read_golden() if GOLDEN.exists() else []
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        temporary = GOLDEN.with_suffix(".tmp")
        temporary.write_text("# tiny recipe on tests/helpers.py tiny_teacher('llama'), layout A,L16,M,G, CPU float32.\n"
                             "# Regenerate (and say why in the commit): HYLO_UPDATE_GOLDEN=1 pytest tests/train -k golden\n"
                             + "".join(f"{name} {step} {loss:.8g}\n" for name, step, loss in rows))
        temporary.replace(GOLDEN)
        change = _largest_change(previous, _read_golden()) if previous else "no previous file"
        pytest.fail(f"HYLO_UPDATE_GOLDEN: rewrote {GOLDEN.name} ({len(rows)} losses; largest change from the "
                    f"previous file: {change}); nothing was compared, rerun without HYLO_UPDATE_GOLDEN to check")
    golden = _read_golden()
    assert [(n, s) for n, s, _ in golden] == [(n, s) for n, s, _ in rows]
    drift = max(abs(got - want) / abs(want) for (_, _, want), (_, _, got) in zip(golden, rows))
    print(f"\ngolden losses: largest relative drift {drift:.3g}")
    for (name, step, want), (_, _, got) in zip(golden, rows):
        assert got == pytest.approx(want, rel=GOLDEN_RTOL, abs=0), f"{name} step {step}"


def test_outputs_on_disk(golden_run, tokenizer):
    out, result = golden_run
    loaded = AutoModelForCausalLM.from_pretrained(out / "final").eval()
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    result.model.eval()
    assert torch.equal(loaded(ids, use_cache=False).logits, result.model(ids, use_cache=False).logits)
    assert loaded.config.rope_parameters["rope_type"] == "linear"  # the long stage's RoPE is part of the model
    assert loaded.config.hylo_provenance["training"]["recipe"] == "tiny"
    assert (out / "final" / "tokenizer.json").exists()
    stage_ends = sorted(p.relative_to(out).as_posix() for p in (out / "checkpoints").glob("*/step-*"))
    assert stage_ends == ["checkpoints/00-align/step-0000015", "checkpoints/01-distill/step-0000015",
                          "checkpoints/02-long/step-0000005"]
    assert not list(out.rglob(".tmp*"))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in lines] == [(s.name, k + 1) for s in result.stages for k in range(s.steps)]
    stored = json.loads((out / "result.json").read_text())
    assert stored["heldout_kl"] == result.heldout_kl


def test_only_the_named_groups_train(golden_run):
    """tiny.yaml trains mixers (align, distill, long) and the MLPs (distill); nothing else may move."""
    _, result = golden_run
    start = upcycle(tiny_teacher("llama"), LAYOUT, kv_lora_rank=16, qk_rope_head_dim=8)
    trained = dict(result.model.named_parameters())
    groups = parameter_groups(start)
    for group, members in groups.items():
        changed = [not torch.equal(p, trained[n]) for n, p in members]
        if group in ("mixers", "mlp"):
            assert all(changed), group
        else:
            assert not any(changed), group


def test_interrupted_run_resumes_bit_exactly(golden_run, tmp_path, tokenizer):
    golden_dir, golden = golden_run
    out = tmp_path / "run"

    def crash(info):
        if info.stage == "distill" and info.step == 7:  # two steps after the step-5 checkpoint
            raise Interrupt

    with pytest.raises(Interrupt):
        run_recipe(tiny_teacher("llama"), LAYOUT, "tiny", out, tokenizer=tokenizer, progress="off", on_step=crash)
    assert (out / "checkpoints" / "01-distill" / "step-0000005").is_dir() and not (out / "final").exists()
    teacher = tiny_teacher("llama")
    rope, inv_freq = dict(teacher.config.rope_parameters), teacher.model.rotary_emb.inv_freq.clone()
    resumed = run_recipe(teacher, LAYOUT, "tiny", out, tokenizer=tokenizer, progress="off")
    assert same_weights(final_weights(out), final_weights(golden_dir))
    # The long stage gave the teacher its RoPE change too; the caller gets the teacher back as it was.
    assert teacher.config.rope_parameters == rope and torch.equal(teacher.model.rotary_emb.inv_freq, inv_freq)
    assert resumed.losses == golden.losses
    steps = [(r["stage"], r["step"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert len(steps) == len(set(steps)) == 35  # the two redone steps were not logged twice


def test_nan_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(golden_run, tmp_path, tokenizer):
    golden_dir, _ = golden_run
    out = tmp_path / "run"

    def poison(info):
        if info.stage == "distill" and info.step == 6:
            with torch.no_grad():
                info.model.model.layers[2].mixer.out_proj.weight[0, 0] = float("nan")

    with pytest.raises(NonFiniteLossError, match=r"stage 'distill' step 7: loss is nan .*"
                                                 r"last good checkpoint .*01-distill/step-0000005 is kept"):
        run_recipe(tiny_teacher("llama"), LAYOUT, "tiny", out, tokenizer=tokenizer, progress="off", on_step=poison)
    assert sorted(p.name for p in (out / "checkpoints" / "01-distill").iterdir()) == ["step-0000005"]
    assert not (out / "final").exists()
    run_recipe(tiny_teacher("llama"), LAYOUT, "tiny", out, tokenizer=tokenizer, progress="off")
    assert same_weights(final_weights(out), final_weights(golden_dir))


def test_finished_run_is_not_retrained_and_another_recipe_is_refused(golden_run, tokenizer):
    out, golden = golden_run
    before = (out / "metrics.jsonl").read_text()
    again = run_recipe(tiny_teacher("llama"), LAYOUT, "tiny", out, tokenizer=tokenizer, progress="off")
    assert again.losses == golden.losses and (out / "metrics.jsonl").read_text() == before
    ids = torch.randint(0, 97, (1, 16))
    assert torch.equal(again.model.eval()(ids, use_cache=False).logits, golden.model.eval()(ids, use_cache=False).logits)
    with pytest.raises(RunMismatchError, match="holds another run"):
        run_recipe(tiny_teacher("llama"), LAYOUT, "proxy_tiny", out, tokenizer=tokenizer, progress="off")
    with pytest.raises(RunMismatchError, match="holds another run"):
        run_recipe(tiny_teacher("llama"), "A,G,M,L16", "tiny", out, tokenizer=tokenizer, progress="off")


def test_proxy_call_in_memory_is_deterministic_and_writes_nothing(tmp_path, monkeypatch):
    """The search's call: a student object, token documents in memory, a token budget, a seed, no output folder."""
    monkeypatch.chdir(tmp_path)
    teacher = tiny_teacher("qwen3")
    docs = torch.randint(3, 97, (60, 40), generator=torch.Generator().manual_seed(0))
    runs = []
    for _ in range(2):
        student = upcycle(teacher, "A,L16,G,M", qk_rope_head_dim=8)
        runs.append(run_recipe(teacher, student, "proxy_tiny", data=docs, tokens=1500, seed=3, progress="off"))
        assert runs[-1].model is student
    a, b = runs
    assert [s.steps for s in a.stages] == [6, 6]
    assert a.losses == b.losses and a.heldout_kl == b.heldout_kl
    assert a.heldout_kl < a.stages[0].eval_before["kl"]
    assert list(tmp_path.iterdir()) == []


def test_split_seed_keeps_the_held_out_set_while_the_seed_changes_the_order(tmp_path, monkeypatch):
    """A search's replicates: seeds 3 and 4 under split seed 3 score the same held-out rows (the same student gets
    the same KL before training) and train in another order (other losses); without a split seed the held-out
    set moves with the seed, and split seed == seed is the default."""
    monkeypatch.chdir(tmp_path)
    teacher = tiny_teacher("qwen3")
    docs = torch.randint(3, 97, (60, 40), generator=torch.Generator().manual_seed(0))
    recipe = load_recipe("proxy_tiny")

    def run(seed, split_seed):
        student = upcycle(teacher, "A,L16,G,M", qk_rope_head_dim=8)
        return run_recipe(teacher, student, recipe.with_seed(seed, split_seed), data=docs, tokens=1500,
                          progress="off")

    a, b, c, default = run(3, 3), run(4, 3), run(4, None), run(3, None)
    assert a.stages[0].eval_before == b.stages[0].eval_before != c.stages[0].eval_before
    assert a.losses != b.losses
    assert default.losses == a.losses and default.heldout_kl == a.heldout_kl


def test_block_target_hidden_loss_and_padded_packing(tokenizer):
    """The other loss options: align on mixer and block outputs with the per-token L2 (Zebra-Llama's ILD), distill
    with CE + hidden-state MSE, one document per row (pad packing), a CE-only long stage without the teacher."""
    recipe = {
        "seed": 1,
        "data": {"sources": [{"path": str(Path(__file__).resolve().parents[2] / "studies/recipes/data/tiny.txt")}],
                 "eval_fraction": 0.1, "packing": "pad", "shuffle_block": 4},
        "student": {"kv_lora_rank": 16, "qk_rope_head_dim": 8},
        "eval": {"sequences": 4},
        "stages": [
            {"kind": "align", "steps": 8, "seq_len": 48, "batch_size": 4, "lr": 3e-3, "target": "both", "loss": "l2"},
            {"kind": "distill", "steps": 4, "seq_len": 48, "batch_size": 4, "micro_batch_size": 1,
             "lr": {"mixers": 1e-3, "norms": 1e-4}, "ce_weight": 0.5, "hidden_weight": 0.1, "temperature": 2.0},
            {"kind": "long", "steps": 2, "seq_len": 96, "batch_size": 2, "lr": 1e-4, "kl_weight": 0.0,
             "ce_weight": 1.0},
        ],
    }
    result = run_recipe(tiny_teacher("llama"), LAYOUT, recipe, tokenizer=tokenizer, progress="off")
    align, distill, long = result.stages
    assert all(align.eval_after["layer_loss"][i] < align.eval_before["layer_loss"][i] for i in (1, 2, 3))
    assert set(distill.metrics) == {"kl", "ce", "hidden"} and set(long.metrics) == {"ce"}
    assert all(torch.isfinite(torch.tensor(s.losses)).all() for s in result.stages)


def test_all_attention_layout_skips_what_has_nothing_to_train(tokenizer):
    result = run_recipe(tiny_teacher("llama"), "A,A,A,A", "proxy_tiny", tokenizer=tokenizer, progress="off")
    assert [s.steps for s in result.stages] == [0, 0]
    assert "skipped" in result.stages[0].notes[-1]


def test_gradient_checkpointing_gives_the_same_gradients():
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    teacher_hidden = torch.randn(2, 24, 64, generator=torch.Generator().manual_seed(1))
    head = torch.randn(97, 64) / 8
    grads, calls = [], []
    for checkpointing in (False, True):
        model = tiny_model().train()
        if checkpointing:
            enable_checkpointing(model)
        calls.append(0)
        model.model.layers[2].mixer.register_forward_hook(lambda *_: calls.__setitem__(-1, calls[-1] + 1))
        objective = DistillObjective(model, temperature=1.0, kl_weight=1.0, ce_weight=0.3, hidden_weight=0.0,
                                     chunk=16)
        labels = next_token_labels(ids, torch.tensor([24, 20]))
        loss, _ = objective(ids, teacher_hidden, head, torch.ones(2, 24) / 48, (labels >= 0).float() / 40, labels)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert calls == [1, 2]  # with checkpointing the layer really is recomputed in the backward pass
    assert grads[0].keys() == grads[1].keys() and all(torch.equal(grads[0][k], grads[1][k]) for k in grads[0])


def test_parameter_groups_cover_every_parameter_once():
    for model in (tiny_model("A,L24,M,G"), upcycle(tiny_teacher("qwen3"), "A,L16,M,G", qk_rope_head_dim=8)):
        groups = parameter_groups(model)
        names = [n for members in groups.values() for n, _ in members]
        assert sorted(names) == sorted(n for n, _ in model.named_parameters()) and len(names) == len(set(names))
        assert all(".layers.0.mixer." not in n for n, _ in groups["mixers"])  # layer 0 is the teacher's attention
        if model.config.tie_word_embeddings:
            assert groups["lm_head"] == []  # the tied head is the embedding matrix


def test_next_token_labels():
    ids = torch.tensor([[5, 6, 7, 8], [1, 2, 0, 0]])
    labels = next_token_labels(ids, torch.tensor([4, 2]))
    assert labels.tolist() == [[6, 7, 8, -100], [2, -100, -100, -100]]


def test_progress_display_modes(capsys):
    from hylo_model.train.progress import Progress

    lines = Progress("lines", log_every=2)
    lines.start_stage("distill", 4)
    for step in range(1, 5):
        lines.update(step, 1234.0, {"loss": 0.5, "kl": 0.25})
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[distill] 4 steps" and len(err) == 3
    assert err[1].startswith("[distill] step 2/4  loss 0.5  kl 0.25  1.2k tok/s  eta ")
    bar = Progress("bar")
    bar.start_stage("align", 3)
    bar.update(3, 10.0, {"loss": 1.0})
    bar.end_stage()
    silent = Progress("bar", enabled=False)  # not the main process
    silent.start_stage("align", 3)
    silent.message("nothing")
    assert "nothing" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="allowed: auto, bar, lines, off"):
        Progress("tqdm")
