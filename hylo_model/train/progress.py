"""Progress display: a rich bar on a terminal (stage, step, tokens/s, losses, ETA), plain lines otherwise."""

from __future__ import annotations

import sys
import time

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
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, \
                TimeRemainingColumn

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


__all__ = ["MODES", "Progress"]
