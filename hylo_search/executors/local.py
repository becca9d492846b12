"""In-process, sequential execution: what the CPU demo and most tests use."""

from __future__ import annotations

from typing import Any

from ..worker.entry import run_task


class LocalExecutor:
    capacity = 1

    def __init__(self) -> None:
        self._pending: list[tuple[int, Any]] = []

    def submit(self, number: int, task: Any) -> None:
        self._pending.append((number, task))

    def wait(self, timeout: float) -> list[tuple[int, dict[str, Any]]]:
        """Run the oldest submitted task to completion (the timeout does not apply in-process)."""
        if not self._pending:
            return []
        number, task = self._pending.pop(0)
        return [(number, run_task(task))]

    def close(self) -> None:
        self._pending.clear()
