"""What a training run reports: :class:`StepInfo` (after every optimizer step), :class:`StageResult` per stage,
:class:`TrainResult` for the run, and :class:`StageState` (where a stage stands: what a mid-stage checkpoint
stores beside the weights)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..model import HyLoForCausalLM
from .data import PackedStream


@dataclass
class StepInfo:
    """What ``on_step`` receives after every optimizer step (and that step's checkpoint, if any), on every process."""

    stage: str
    stage_index: int
    kind: str
    step: int
    steps: int
    loss: float
    metrics: dict[str, float]
    lr: dict[str, float]
    tokens: int
    tokens_per_s: float
    model: nn.Module


@dataclass
class StageResult:
    """``losses``: the global loss of every optimizer step; ``metrics``: the last step's loss terms; ``eval_before``
    / ``eval_after``: held-out ``kl``, ``ce`` (and ``layer_loss`` per converted layer for align stages)."""

    name: str
    kind: str
    steps: int
    tokens: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    eval_before: dict[str, Any] = field(default_factory=dict)
    eval_after: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageResult:
        data = dict(data)
        for key in ("eval_before", "eval_after"):
            if "layer_loss" in data.get(key, {}):
                data[key] = {**data[key], "layer_loss": {int(k): v for k, v in data[key]["layer_loss"].items()}}
        return cls(**data)


@dataclass
class TrainResult:
    """``heldout_kl`` / ``heldout_loss``: held-out KL(teacher ‖ student) and student next-token loss per token after
    the last stage (the search's proxy objective); ``losses``: ``{stage: [loss per optimizer step]}``."""

    stages: list[StageResult]
    model: HyLoForCausalLM
    out_dir: Path | None = None
    recipe: str | None = None
    heldout_kl: float | None = field(init=False)
    heldout_loss: float | None = field(init=False)
    losses: dict[str, list[float]] = field(init=False)

    def __post_init__(self) -> None:
        last = next((s.eval_after for s in reversed(self.stages) if s.eval_after), {})
        self.heldout_kl = last.get("kl")
        self.heldout_loss = last.get("ce")
        self.losses = {s.name: list(s.losses) for s in self.stages}

    def stage(self, name: str) -> StageResult:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}; stages: {', '.join(s.name for s in self.stages)}")

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "heldout_kl": self.heldout_kl, "heldout_loss": self.heldout_loss,
                "stages": [asdict(s) for s in self.stages]}


@dataclass
class StageState:
    """Where a stage stands after ``step`` optimizer steps: what a mid-stage checkpoint stores beside the weights,
    optimizer, scheduler and data position (``trainer_state.json``), and what the stage's result is built from."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    eval_before: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, state: dict[str, Any], stream: PackedStream) -> StageState:
        """The state a mid-stage checkpoint stored; ``stream`` is moved to its data position."""
        stream.load_state_dict(state["data"])
        return cls(state["step"], state["losses"], state["tokens"], state["seconds"], state["metrics"],
                   state["eval_before"])

    def advance(self, step: int, loss: float, metrics: dict[str, float], tokens: int, seconds: float) -> None:
        self.step = step
        self.seconds += seconds
        self.tokens += tokens
        self.losses.append(loss)
        self.metrics = metrics

    @staticmethod
    def finished(index: int, result: StageResult, fingerprint: str, completed: list[StageResult],
                 doc_state: dict[str, Any] | None) -> dict[str, Any]:
        """What a stage-end checkpoint stores: the stage's result, for a rerun to continue with the next stage."""
        return {"stage_index": index, "stage_name": result.name, "step": result.steps, "steps": result.steps,
                "stage_done": True, "result": asdict(result), "fingerprint": fingerprint,
                "completed": [asdict(s) for s in completed], "recipe_doc_state": doc_state}

    def checkpoint(self, index: int, name: str, steps: int, stream: PackedStream, fingerprint: str,
                   completed: list[StageResult], doc_state: dict[str, Any] | None) -> dict[str, Any]:
        return {"stage_index": index, "stage_name": name, "step": self.step, "steps": steps, "stage_done": False,
                "data": stream.state_dict(), "losses": self.losses, "tokens": self.tokens, "seconds": self.seconds,
                "metrics": self.metrics, "eval_before": self.eval_before, "fingerprint": fingerprint,
                "completed": [asdict(s) for s in completed], "recipe_doc_state": doc_state}


def stage_summary(result: StageResult) -> str:
    def fmt(ev: dict[str, Any]) -> str:
        parts = [f"kl {ev['kl']:.4g}" if ev.get("kl") is not None else "", f"ce {ev['ce']:.4g}" if "ce" in ev else ""]
        return " ".join(p for p in parts if p)

    return (f"[{result.name}] done: {result.steps} steps, {result.tokens} tokens, {result.seconds:.1f}s; "
            f"held-out {fmt(result.eval_before)} -> {fmt(result.eval_after)}")


__all__ = ["StageResult", "StageState", "StepInfo", "TrainResult", "stage_summary"]
