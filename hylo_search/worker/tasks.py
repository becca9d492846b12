"""What the driver sends a worker (tasks, as plain data pickled to Ray) and what a failed task sends back.

A worker never raises: a failure becomes part of its record, built here and only here (:class:`Failure`), with a
``kind`` the driver acts on — ``oom`` (out of memory), ``nan`` (a non-finite loss or metric), ``exception`` (any
other error in the task) or ``lost`` (the worker or its node died, or returned nothing) — and a message it shows.
"""

from __future__ import annotations

import traceback as tb
from dataclasses import dataclass
from typing import Any

FAILURE_KINDS = ("oom", "nan", "exception", "lost")


@dataclass
class TrialTask:
    """Everything a worker needs, as plain data (pickled to Ray workers). ``proxy``: a proxy config (mapping)
    that replaces the study's for this trial (a first tier, the audit's longer proxy); ``probes``: fields that
    override the study's probe config (a finalist's probe samples, the audit's fresh probe seed)."""

    study: dict[str, Any]
    study_dir: str
    number: int
    tokens: list[str]
    seed: int
    threads: int | None = None
    proxy: dict[str, Any] | None = None
    probes: dict[str, Any] | None = None


@dataclass
class LibraryTask:
    """One worker's share of the library (plain data, pickled to Ray). ``kind`` ``blocks``: train and score the
    blocks of ``token`` at ``layers``; ``restore``: the KL-guided scores of the all-``token`` layout ``base`` with
    each of ``layers`` restored alone to ``keep`` (the blocks exist by then)."""

    study: dict[str, Any]
    study_dir: str
    token: str
    layers: list[int]
    threads: int | None = None
    kind: str = "blocks"
    keep: str | None = None
    base: list[str] | None = None


@dataclass(frozen=True)
class Failure:
    """Why a task failed. ``text`` (``"<kind>: <message>"``) is what records, trial attrs and tables show."""

    kind: str
    message: str
    traceback: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAILURE_KINDS:
            raise ValueError(f"failure kind {self.kind!r}; allowed: {', '.join(FAILURE_KINDS)}")

    @property
    def text(self) -> str:
        return f"{self.kind}: {self.message}"

    def fields(self) -> dict[str, Any]:
        """The record fields of this failure (merged into a task's record)."""
        out: dict[str, Any] = {"status": "fail", "failure": self.text, "failure_kind": self.kind}
        if self.traceback:
            out["traceback"] = self.traceback
        return out

    @classmethod
    def of(cls, record: dict[str, Any]) -> Failure | None:
        """The failure a record carries (None for a record with ``status: ok``); a record without a result at all
        is a lost task."""
        if record.get("status") == "ok" and "failure" not in record:
            return None
        text = record.get("failure")
        if not text:
            return cls("lost", "the worker returned no result")
        kind = record.get("failure_kind") or text.partition(":")[0]
        message = text.partition(": ")[2] if text.startswith(f"{kind}: ") else text
        return cls(kind if kind in FAILURE_KINDS else "exception", message, record.get("traceback"))

    @classmethod
    def from_exception(cls, error: BaseException, kind: str | None = None) -> Failure:
        """A failure from an exception being handled: ``oom`` for CUDA/CPU out-of-memory errors, ``nan`` for a
        diverged training run (the trainer's NonFiniteLossError), else ``exception``; with the traceback's tail."""
        name = type(error).__name__
        if kind is None:
            kind = "oom" if "OutOfMemory" in name else "nan" if "NonFinite" in name else "exception"
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        if kind in ("oom", "lost"):
            message = first or ("out of memory" if kind == "oom" else name)
        else:
            message = f"{name}: {first}" if first else name
        trace = "".join(tb.format_exc().splitlines(keepends=True)[-12:]) if kind != "oom" else None
        return cls(kind, message, trace)
