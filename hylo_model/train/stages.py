"""What one optimizer step computes in each stage kind, and held-out evaluation.

* :func:`parameter_groups` sorts every student parameter into exactly one named group (see recipe.py).
* :func:`~hylo_model.upcycle.capture.teacher_pass` (shared with the upcycling gates) runs the frozen teacher once
  under no_grad and returns what the stage needs: the final (normed) hidden state, and per layer the input hidden
  state, the attention output and the block output.
* :class:`AlignObjective` / :class:`DistillObjective` are ``nn.Module``s holding the student, so that accelerate /
  DDP wrap them and synchronise gradients whatever the stage computes. They return sums over tokens weighted by
  the caller's row weights, which carry the global normaliser (so two processes equal one, see trainer.py). Each
  owns its teacher pass (``inputs``: what its ``forward`` takes for one micro-batch, the teacher run under no_grad
  outside the DDP module) and names the loss terms it reports (``names`` / ``terms`` / ``report``).
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from ..layers.common import rope_frequencies
from ..upcycle.capture import TeacherOutputs, teacher_pass
from .losses import distill_loss, token_loss
from .recipe import GROUPS, AlignStage, LongStage
from .rope import check_rope_parameters


def parameter_groups(student: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """``{group: [(name, parameter), ...]}`` over :data:`~hylo_model.train.recipe.GROUPS`. A tied LM head is the
    embedding matrix and belongs to ``embeddings``."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in GROUPS}
    layers = student.model.layers
    for name, param in student.named_parameters():
        if name.startswith("model.layers."):
            index, rest = name[len("model.layers."):].split(".", 1)
            if rest.startswith("mixer."):
                group = "attention" if layers[int(index)].mixer_type == "attention" else "mixers"
            elif rest.startswith("mlp."):
                group = "mlp"
            elif rest.startswith(("input_layernorm.", "post_attention_layernorm.")):
                group = "norms"
            else:
                raise ValueError(f"parameter {name!r} belongs to no training group")
        elif name.startswith("model.embed_tokens."):
            group = "embeddings"
        elif name.startswith("model.norm."):
            group = "norms"
        elif name.startswith("lm_head."):
            group = "lm_head"
        else:
            raise ValueError(f"parameter {name!r} belongs to no training group")
        groups[group].append((name, param))
    return groups


def converted_layers(student: nn.Module) -> list[int]:
    """Indices of layers whose mixer is not the teacher's attention (MLA, Mamba2, GDN)."""
    return [i for i, layer in enumerate(student.model.layers) if layer.mixer_type != "attention"]


def teacher_head(teacher: nn.Module) -> torch.Tensor:
    """The teacher's LM head matrix ``[V, H]``."""
    return teacher.get_output_embeddings().weight


class AlignObjective(nn.Module):
    """Layer-wise alignment of the converted mixers; the student's other parameters are frozen by the caller."""

    def __init__(self, student: nn.Module, layers: list[int], target: str = "mixer", loss: str = "mse") -> None:
        super().__init__()
        self.student = student
        self.layers = list(layers)
        self.target = target
        self.loss = loss

    @property
    def names(self) -> list[str]:
        return ["loss"] + [f"layer{i}" for i in self.layers]

    def inputs(self, teacher: nn.Module, input_ids: torch.Tensor, kl_rows: torch.Tensor, ce_rows: torch.Tensor,
               labels: torch.Tensor) -> tuple[Any, ...]:
        """The teacher's per-layer tensors for ``input_ids`` ``[B, T]`` and the row weights: ``forward``'s
        arguments."""
        t_out = teacher_pass(teacher, input_ids, self.layers, attention=self.target in ("mixer", "both"),
                             blocks=self.target in ("block", "both"))
        return ([t_out.inputs[i] for i in self.layers], [t_out.attention.get(i) for i in self.layers],
                [t_out.blocks.get(i) for i in self.layers], kl_rows)

    def terms(self, loss: torch.Tensor, per_layer: torch.Tensor) -> list[torch.Tensor]:
        """What one micro-batch adds to each of ``names``."""
        return [loss.detach(), *per_layer]

    def report(self, values: dict[str, float]) -> dict[str, float]:
        return values

    def forward(self, inputs: list[torch.Tensor], attention: list[torch.Tensor], blocks: list[torch.Tensor],
                row_weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per converted layer (in ``self.layers`` order): ``inputs`` ``[B, T, H]`` teacher hidden states entering
        the layer; ``attention`` / ``blocks`` the teacher's attention / block outputs (only those the target
        needs). row_weights ``[B, T]``. Returns the total and the per-layer weighted sums ``[L]``."""
        base = self.student.model
        per_layer = []
        for slot, index in enumerate(self.layers):
            layer = base.layers[index]
            hidden = inputs[slot].to(layer.input_layernorm.weight.dtype)
            mixed = base.mixer_forward(index, hidden)
            term = hidden.new_zeros(hidden.shape[:2], dtype=torch.float32)
            if self.target in ("mixer", "both"):
                term = term + token_loss(mixed, attention[slot], self.loss)
            if self.target in ("block", "both"):
                out = hidden + mixed
                out = out + layer.mlp(layer.post_attention_layernorm(out))
                term = term + token_loss(out, blocks[slot], self.loss)
            per_layer.append((term * row_weights).sum())
        per_layer_t = torch.stack(per_layer)
        return per_layer_t.sum(), per_layer_t.detach()


class DistillObjective(nn.Module):
    """End-to-end student forward + chunked KL/CE (+ optional hidden-state MSE) against teacher tensors."""

    names = ["loss", "kl", "ce", "hidden"]

    def __init__(self, student: nn.Module, *, temperature: float, kl_weight: float, ce_weight: float,
                 hidden_weight: float, chunk: int) -> None:
        super().__init__()
        self.student = student
        self.temperature, self.kl_weight, self.ce_weight = temperature, kl_weight, ce_weight
        self.hidden_weight, self.chunk = hidden_weight, chunk

    def inputs(self, teacher: nn.Module, input_ids: torch.Tensor, kl_rows: torch.Tensor, ce_rows: torch.Tensor,
               labels: torch.Tensor) -> tuple[Any, ...]:
        """``forward``'s arguments for ``input_ids`` ``[B, T]``: the teacher runs only when its logits or layer
        outputs are used (kl_weight or hidden_weight > 0)."""
        guided = self.kl_weight > 0 or self.hidden_weight > 0
        t_out = teacher_pass(teacher, input_ids, all_blocks=self.hidden_weight > 0) if guided else None
        blocks = None
        if self.hidden_weight > 0:
            count = len(teacher.model.layers)
            blocks = [t_out.blocks[i] for i in range(count - 1)] + [t_out.last_hidden]
        return (input_ids, t_out.last_hidden if guided and self.kl_weight > 0 else None,
                teacher_head(teacher) if guided else None, kl_rows, ce_rows, labels, blocks)

    def terms(self, loss: torch.Tensor, stats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return [loss.detach(), stats["kl"], stats["ce"], stats.get("hidden", loss.new_zeros(()))]

    def report(self, values: dict[str, float]) -> dict[str, float]:
        """The terms this stage optimises (a zero weight's term is left out)."""
        weights = {"kl": self.kl_weight, "ce": self.ce_weight, "hidden": self.hidden_weight}
        return {k: v for k, v in values.items() if weights[k] > 0}

    def forward(self, input_ids: torch.Tensor, teacher_hidden: torch.Tensor | None,
                teacher_weight: torch.Tensor | None, kl_rows: torch.Tensor, ce_rows: torch.Tensor,
                labels: torch.Tensor, teacher_blocks: list[torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """input_ids / kl_rows / ce_rows / labels ``[B, T]``; teacher_hidden ``[B, T, H']``; teacher_blocks: the
        teacher's per-layer outputs (hidden_weight > 0). Returns the loss and detached weighted sums."""
        want_hidden = self.hidden_weight > 0
        out = self.student.model(input_ids=input_ids, use_cache=False, output_hidden_states=want_hidden)
        hidden = out.last_hidden_state
        loss, kl_sum, ce_sum = distill_loss(
            hidden.flatten(0, 1), self.student.lm_head.weight,
            teacher_hidden.flatten(0, 1) if teacher_hidden is not None else None, teacher_weight,
            kl_rows=kl_rows.flatten(), ce_rows=ce_rows.flatten(), labels=labels.flatten(),
            temperature=self.temperature, kl_weight=self.kl_weight if teacher_hidden is not None else 0.0,
            ce_weight=self.ce_weight, chunk=self.chunk,
        )
        stats = {"kl": kl_sum, "ce": ce_sum}
        if want_hidden:
            # Layer outputs: HyLo's hidden_states are (embeddings, inputs of layers 1.., final normed); the raw
            # output of layer i is the input of layer i+1, and the last layer is compared after the final norm.
            student_blocks = list(out.hidden_states[1:-1]) + [hidden]
            terms = [token_loss(s, t) for s, t in zip(student_blocks, teacher_blocks)]
            hidden_sum = (torch.stack(terms).mean(0) * kl_rows).sum()
            loss = loss + self.hidden_weight * hidden_sum
            stats["hidden"] = hidden_sum.detach()
        return loss, stats


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the base rate before optimizer step ``step`` (0-based): linear warmup reaching 1 at the end
    of warmup, then cosine / linear decay to ``min_ratio`` at the last step, or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup + 1:
        return 1.0
    progress = min(1.0, (step - warmup) / (total - warmup - 1))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1 - progress
    return min_ratio + (1 - min_ratio) * decay


def make_optimizer(student: nn.Module, stage: Any) -> tuple[torch.optim.Optimizer | None, list[str]]:
    """AdamW over the stage's named parameter groups at their rates (no weight decay on vectors and on parameters
    marked ``_no_weight_decay``); every other parameter is frozen. None when no group has parameters; the notes
    say which named groups were empty."""
    groups = parameter_groups(student)
    notes = []
    for param in student.parameters():
        param.requires_grad_(False)
    param_groups = []
    for name, rate in stage.lr.items():
        members = groups[name]
        if not members:
            notes.append(f"group {name!r} is empty" + (" (the LM head is tied to the embeddings: train "
                                                       "'embeddings')" if name == "lm_head" else ""))
            continue
        decay = [p for n, p in members if p.ndim >= 2 and not getattr(p, "_no_weight_decay", False)]
        keep = [p for n, p in members if not (p.ndim >= 2 and not getattr(p, "_no_weight_decay", False))]
        for params, wd, tag in ((decay, stage.weight_decay, name), (keep, 0.0, f"{name}/no_decay")):
            if params:
                for p in params:
                    p.requires_grad_(True)
                param_groups.append({"params": params, "lr": rate, "weight_decay": wd, "name": tag})
    if not param_groups:
        return None, notes
    return torch.optim.AdamW(param_groups, betas=stage.betas, eps=stage.eps), notes


def long_stage_rope(stage: LongStage, original_max_positions: int) -> dict[str, Any]:
    """A long stage's RoPE parameters; the types that scale relative to the pretraining length (yarn, llama3,
    longrope) get the model's original context when the recipe leaves it out (transformers would take
    max_position_embeddings, which the stage has raised to its own length)."""
    parameters = stage.rope.parameters()
    if parameters.get("rope_type") in ("yarn", "llama3", "longrope"):
        parameters.setdefault("original_max_position_embeddings", original_max_positions)
    return parameters


def rope_warning(config: Any, original_rope: dict[str, Any], original_max_positions: int,
                 stage: LongStage) -> str | None:
    """Why a long stage's RoPE costs recall, or None: it changes the rotary angles of positions the model was
    trained at although the stage does not go beyond them, and attention and MLA weights were learned at the old
    angles (linear x2 on a student of the tiny teacher, 5 steps at 64 tokens, took needle recall at 1K tokens from
    0.46 to 0.08). ``config``: the student's (copied, not changed)."""
    if stage.seq_len > original_max_positions:
        return None
    before = copy.deepcopy(config)
    before.rope_parameters, before.max_position_embeddings = dict(original_rope), original_max_positions
    after = copy.deepcopy(before)
    after.rope_parameters = check_rope_parameters(before, long_stage_rope(stage, original_max_positions))
    (old, old_scale), (new, new_scale) = rope_frequencies(before), rope_frequencies(after)
    if torch.equal(old, new) and old_scale == new_scale:
        return None
    return (f"rope {after.rope_parameters.get('rope_type')!r} changes the rotary angles of positions the model was "
            f"trained at, yet seq_len {stage.seq_len} stays within its original context ({original_max_positions} "
            "positions): attention and MLA weights learned at the old angles lose recall unless the stage retrains "
            f"them; leave 'rope' out below {original_max_positions} tokens, or use rope_type 'dynamic' (unchanged up "
            f"to {original_max_positions})")


def make_objective(stage: Any, student: nn.Module, layers: list[int]) -> AlignObjective | DistillObjective:
    """The objective of one recipe stage (an align stage's over the converted ``layers``)."""
    if isinstance(stage, AlignStage):
        return AlignObjective(student, layers, stage.target, stage.loss)
    return DistillObjective(student, temperature=stage.temperature, kl_weight=stage.kl_weight,
                            ce_weight=stage.ce_weight, hidden_weight=stage.hidden_weight, chunk=stage.kl_chunk)


def next_token_labels(input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` labels: the next token of the same row, -100 at the last real token and on padding."""
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = input_ids[:, 1:]
    positions = torch.arange(input_ids.shape[1])[None, :]
    labels[positions >= (lengths[:, None] - 1)] = -100
    return labels


@torch.no_grad()
def evaluate(student: nn.Module, teacher: nn.Module | None, input_ids: torch.Tensor, lengths: torch.Tensor, *,
             micro_batch_size: int, layers: list[int] = (), align: tuple[str, str] | None = None, chunk: int = 1024,
             device: torch.device | None = None, autocast: Any = None) -> dict[str, Any]:
    """Held-out metrics per token: ``kl`` (teacher ‖ student at τ = 1), ``ce`` (student next-token loss) and, with
    ``align=(target, loss)``, ``layer_loss`` {layer: mean per-token loss} of each converted layer fed the teacher's
    input (the align stage's own objective)."""
    device = device or next(student.parameters()).device
    was_training = student.training
    student.eval()
    kl = ce = 0.0
    n_kl = n_ce = 0
    per_layer = torch.zeros(len(layers), dtype=torch.float64)
    aligner = AlignObjective(student, layers, *(align or ("mixer", "mse")))
    try:
        for start in range(0, input_ids.shape[0], micro_batch_size):
            ids = input_ids[start:start + micro_batch_size].to(device)
            lens = lengths[start:start + micro_batch_size]
            mask = (torch.arange(ids.shape[1])[None] < lens[:, None]).to(device)
            labels = next_token_labels(ids.cpu(), lens).to(device)
            with autocast() if autocast else nullcontext():
                t_out = None
                if teacher is not None:
                    t_out = teacher_pass(teacher, ids, layers if align else [], attention=bool(align),
                                         blocks=bool(align))
                hidden = student.model(input_ids=ids, use_cache=False).last_hidden_state
                _, kl_sum, ce_sum = distill_loss(
                    hidden.flatten(0, 1), student.lm_head.weight,
                    t_out.last_hidden.flatten(0, 1) if t_out is not None else None,
                    teacher_head(teacher) if teacher is not None else None,
                    kl_rows=mask.flatten().float(), ce_rows=mask.flatten().float(), labels=labels.flatten(),
                    kl_weight=1.0 if teacher is not None else 0.0, ce_weight=1.0, chunk=chunk)
                kl += kl_sum.item()
                ce += ce_sum.item()
                n_kl += int(mask.sum())
                n_ce += int((labels >= 0).sum())
                if align and layers:
                    _, sums = aligner([t_out.inputs[i] for i in layers], [t_out.attention[i] for i in layers],
                                      [t_out.blocks[i] for i in layers], mask.float())
                    per_layer += sums.double().cpu()
    finally:
        student.train(was_training)
    result: dict[str, Any] = {"kl": kl / max(n_kl, 1) if teacher is not None else None, "ce": ce / max(n_ce, 1)}
    if align:
        result["layer_loss"] = {int(i): float(v) / max(n_kl, 1) for i, v in zip(layers, per_layer)}
    return result


__all__ = [
    "AlignObjective",
    "DistillObjective",
    "TeacherOutputs",
    "converted_layers",
    "evaluate",
    "long_stage_rope",
    "lr_factor",
    "make_objective",
    "make_optimizer",
    "next_token_labels",
    "parameter_groups",
    "rope_warning",
    "teacher_head",
    "teacher_pass",
]
