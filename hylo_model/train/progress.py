"""What a training run shows and records as it goes: :class:`Progress` (a rich bar on a terminal — stage, step,
tokens/s, losses, ETA — plain lines otherwise) and :class:`StepLog` (each optimizer step and in-stage evaluation
into the run folder's metrics.jsonl, the display, and accelerate's experiment trackers)."""

from __future__ import annotations

import sys
import time
from typing import Any

MODES = ("auto", "bar", "lines", "off")


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if v is not None)


def _rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1000:.1f}k tok/s" if tokens_per_s >= 1000 else f"{tokens_per_s:.0f} tok/s"


class Progress:
    """``mode``: ``bar`` (rich), ``lines`` (one line every ``log_every`` steps on stderr), ``off``, or ``auto``
    (bar on a terminal, lines otherwise). Only the main process shows anything."""

    def __init__(self, mode: str = "auto", enabled: bool = True, log_every: int = 10) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r} is unknown; allowed: {', '.join(MODES)}")
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "off"
        self.log_every = log_every
        self._bar = None
        self._task = None
        self._start = 0.0
        self._first_step = 0
        self._stage = ""

    def start_stage(self, name: str, total: int, done: int = 0) -> None:
        self._stage, self._total, self._first_step, self._start = name, total, done, time.perf_counter()
        if self.mode == "bar":
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[losses]}"), TimeRemainingColumn(),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(name, total=total, completed=done, rate="", losses="")
        elif self.mode == "lines":
            self.message(f"[{name}] {total} steps" + (f", resuming after step {done}" if done else ""))

    def update(self, step: int, tokens_per_s: float, metrics: dict[str, float]) -> None:
        if self.mode == "bar" and self._bar is not None:
            self._bar.update(self._task, completed=step, rate=_rate(tokens_per_s), losses=_fmt(metrics))
        elif self.mode == "lines" and (step % self.log_every == 0 or step == self._total):
            elapsed = time.perf_counter() - self._start
            done = max(step - self._first_step, 1)
            eta = elapsed / done * (self._total - step)
            self.message(f"[{self._stage}] step {step}/{self._total}  {_fmt(metrics)}  {_rate(tokens_per_s)}  "
                         f"eta {time.strftime('%H:%M:%S', time.gmtime(eta))}")

    def end_stage(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def message(self, text: str) -> None:
        if self.mode == "off":
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)


class StepLog:
    """Where each optimizer step's numbers go: ``run_dir.append_metrics`` (metrics.jsonl; None: nothing is
    written), the progress display, and the accelerator's trackers when ``tracking`` (``accelerator.log``, on the
    main process, at the run's global step: steps count on across stages)."""

    def __init__(self, run_dir: Any, progress: Progress, accelerator: Any, tracking: bool, offsets: list[int]) -> None:
        self.run_dir, self.progress, self.accelerator, self.tracking = run_dir, progress, accelerator, tracking
        self.offsets = offsets  # optimizer steps before each stage

    def step(self, name: str, index: int, kind: str, step: int, loss: float, metrics: dict[str, float],
             grad_norm: float, rates: dict[str, float], tokens: int, tokens_per_s: float) -> None:
        if self.run_dir is not None:
            self.run_dir.append_metrics({"stage": name, "stage_index": index, "kind": kind, "step": step,
                                         "loss": loss, **metrics, "grad_norm": grad_norm, "lr": rates,
                                         "tokens": tokens, "tokens_per_s": tokens_per_s})
        self.progress.update(step, tokens_per_s, {"loss": loss, **metrics})
        if self.tracking:
            values = {f"{name}/loss": loss, **{f"{name}/{k}": v for k, v in metrics.items()},
                      f"{name}/grad_norm": grad_norm, f"{name}/tokens_per_s": tokens_per_s,
                      **{f"{name}/lr/{group}": rate for group, rate in rates.items()}}
            self.accelerator.log(values, step=self.offsets[index] + step)

    def evaluation(self, name: str, index: int, step: int, result: dict[str, Any]) -> None:
        """A held-out evaluation (``kl``, ``ce``, ``layer_loss``) after optimizer step ``step`` of stage ``index``."""
        if self.run_dir is not None:
            self.run_dir.append_metrics({"stage": name, "stage_index": index, "step": step, "eval": result})
        self.heldout(name, index, step, result)

    def heldout(self, name: str, index: int, step: int, result: dict[str, Any]) -> None:
        """Held-out scores to the trackers only (a stage's scores at its end are in result.json already)."""
        scalars = {f"{name}/heldout_{k}": v for k, v in result.items() if isinstance(v, (int, float))}
        if self.tracking and scalars:
            self.accelerator.log(scalars, step=self.offsets[index] + step)


__all__ = ["MODES", "Progress", "StepLog"]
