"""What the long-running commands (``study``, ``library``) share to show progress: printing with markup off (a
layout, a baseline name or an error message may hold brackets, which rich would read as style tags and drop), an
ETA from the pace so far, a live bar on a terminal, and the block library's lines."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Iterator


def say(console: Any, text: str) -> None:
    """Print ``text`` as it is: no markup, no highlighting."""
    console.print(text, markup=False, highlight=False)


def format_duration(seconds: float) -> str:
    """``45 s``, ``3 min 20 s``, ``2 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Eta:
    """Time left for ``total`` units of work at the pace since this object was made (units already done then,
    as in a resumed study, do not count towards the pace)."""

    def __init__(self, total: int, done: int = 0) -> None:
        self.total = total
        self.done_at_start = done
        self.began = time.monotonic()

    def restart(self, done: int) -> None:
        self.done_at_start = done
        self.began = time.monotonic()

    def text(self, done: int) -> str:
        """``eta 3 min 20 s`` (after the first unit of this run), or ``""`` when nothing is known or left."""
        finished, left = done - self.done_at_start, self.total - done
        if finished <= 0 or left <= 0:
            return ""
        return f"eta {format_duration((time.monotonic() - self.began) / finished * left)}"


@contextmanager
def live_bar(console: Any, label: str, total: int) -> Iterator[Any]:
    """On a terminal, a rich bar (done/total, elapsed, time left) that ``update(completed=..., status=...)``
    moves; elsewhere (a log file, a pipe) a no-op: the printed lines are the progress there."""
    if not console.is_terminal:
        yield lambda **fields: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}", markup=False), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(label, total=total, status="starting")
        yield lambda **fields: bar.update(task, **fields)


class LibraryLines:
    """The block library's events as lines: ``library_started`` (the plan), one ``library_task`` line per
    finished task with its count and an ETA, and ``library`` (the summary)."""

    def __init__(self, console: Any, prefix: str = "block library") -> None:
        self.console = console
        self.prefix = prefix
        self.tasks = 0
        self.done = 0
        self.eta = Eta(0)
        self.update: Any = lambda **fields: None

    def report(self, event: str, info: dict[str, Any]) -> bool:
        """Print ``event`` if it is the library's; returns whether it was."""
        if event == "library_started":
            self.tasks, self.done, self.eta = info["tasks"], 0, Eta(info["tasks"])
            say(self.console, f"{self.prefix}: {info['entries']} blocks in {info['tasks']} tasks"
                + (f"; {info['detail']}" if info.get("detail") else ""))
            self.update(total=self.tasks, completed=0, status="")
        elif event == "library_task":
            self.done += 1
            seconds = f" in {info['seconds']:.1f} s" if isinstance(info.get("seconds"), (int, float)) else ""
            eta = self.eta.text(self.done)
            say(self.console, f"  [{self.done}/{self.tasks}] {info['token']:<6} layers {info['layers']}: trained "
                f"{len(info['trained'])}{seconds}" + (f"   | {eta}" if eta else ""))
            self.update(completed=self.done, status=f"{info['token']} done")
        elif event == "library":
            summary = info["summary"]
            say(self.console, f"{self.prefix}: {summary.trained} trained, {summary.reused} reused "
                f"({summary.seconds:.1f} s)")
        else:
            return False
        return True
