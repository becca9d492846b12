"""The gates a study runs before spending GPU time on an upcycled student."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedModel

from ..model import HyLoForCausalLM
from .capture import teacher_pass


@dataclass
class LayerReport:
    layer: int
    mixer: str
    relative_error: float  # ||student mixer - teacher attention|| / ||teacher attention||
    cosine: float
    finite: bool


@dataclass
class SanityReport:
    """``parity_max_abs_diff``: all-attention student vs teacher logits (None if not run). ``layers``: each
    layer's mixer output against the teacher's attention output, both fed the teacher's hidden state."""

    parity_max_abs_diff: float | None
    parity_tolerance: float
    layers: list[LayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        parity = self.parity_max_abs_diff is None or self.parity_max_abs_diff <= self.parity_tolerance
        return parity and all(row.finite for row in self.layers)

    def failures(self) -> list[str]:
        problems = [f"layer {r.layer} ({r.mixer}) output is not finite" for r in self.layers if not r.finite]
        if self.parity_max_abs_diff is not None and self.parity_max_abs_diff > self.parity_tolerance:
            problems.insert(0, f"all-attention student differs from the teacher by {self.parity_max_abs_diff:.3g} "
                               f"(> {self.parity_tolerance:g}): the key map or the dense copy is wrong")
        return problems

    def raise_for_failures(self) -> None:
        if not self.ok:
            raise RuntimeError("upcycling sanity check failed: " + "; ".join(self.failures()))

    def table(self) -> str:
        lines = [f"{'layer':>5}  {'mixer':<9} {'rel.err':>9} {'cosine':>8}"]
        for r in self.layers:
            lines.append(f"{r.layer:>5}  {r.mixer:<9} {r.relative_error:>9.4f} {r.cosine:>8.4f}"
                         f"{'' if r.finite else '  NOT FINITE'}")
        if self.parity_max_abs_diff is not None:
            lines.append(f"all-attention parity: max |Δlogit| = {self.parity_max_abs_diff:.3g}")
        return "\n".join(lines + self.notes)


@torch.no_grad()
def layer_reconstruction(
    student: HyLoForCausalLM, teacher: PreTrainedModel, input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> list[LayerReport]:
    """Feed every student mixer the teacher's own input hidden state of that layer and compare its output with
    the teacher attention's output (the first, free sensitivity signal for the search)."""
    device = next(student.parameters()).device
    mask = attention_mask.to(device) if attention_mask is not None else None
    layers = range(len(student.model.layers))
    out = teacher_pass(teacher, input_ids, list(layers), attention=True, attention_mask=attention_mask)
    reports = []
    for i in layers:
        hidden = out.inputs[i].to(device, student.model.layers[i].input_layernorm.weight.dtype)
        got = student.model.mixer_forward(i, hidden, mask).float()
        want = out.attention[i].to(device).float()
        if mask is not None:
            keep = mask.bool()
            got, want = got[keep], want[keep]
        error = ((got - want).norm() / want.norm().clamp_min(1e-12)).item()
        cosine = torch.nn.functional.cosine_similarity(got.reshape(-1, got.shape[-1]),
                                                       want.reshape(-1, want.shape[-1]), dim=-1).mean().item()
        reports.append(LayerReport(i, student.model.layers[i].mixer_type, error, cosine, bool(torch.isfinite(got).all())))
    return reports


@torch.no_grad()
def sanity_check(
    student: HyLoForCausalLM,
    teacher: PreTrainedModel,
    input_ids: torch.Tensor | None = None,
    *,
    attention_mask: torch.Tensor | None = None,
    parity: bool = True,
    parity_tolerance: float | None = None,
    seed: int = 0,
) -> SanityReport:
    """Run the gates: (1) the all-attention upcycle of ``teacher`` reproduces its logits, (2) every layer's
    output is finite, (3) per-layer reconstruction error of each mixer against the teacher's attention.

    ``input_ids`` should be a few real sequences of the study's data; without them random tokens are used
    (noted in the report). ``parity_tolerance`` defaults to 1e-4 in float32 and 5e-2 in 16-bit dtypes.
    """
    from .core import upcycle

    notes = []
    device = next(teacher.parameters()).device
    if input_ids is None:
        generator = torch.Generator().manual_seed(seed)
        input_ids = torch.randint(0, teacher.config.vocab_size, (2, 64), generator=generator)
        notes.append("note: random tokens used; pass real sequences for a meaningful reconstruction table")
    input_ids = input_ids.to(device)
    dtype = next(teacher.parameters()).dtype
    tolerance = parity_tolerance if parity_tolerance is not None else (1e-4 if dtype == torch.float32 else 5e-2)
    parity_diff = None
    if parity:
        reference = upcycle(teacher, ",".join(["A"] * teacher.config.num_hidden_layers), dtype=dtype)
        want = teacher(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
        got = reference(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
        if attention_mask is not None:
            keep = attention_mask.bool()
            got, want = got[keep], want[keep]
        parity_diff = (got - want).abs().max().item()
        del reference
        if math.isnan(parity_diff):
            parity_diff = float("inf")
    layers = layer_reconstruction(student, teacher, input_ids, attention_mask)
    return SanityReport(parity_diff, tolerance, layers, notes)
