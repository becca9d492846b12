"""The plug-in API: what a proxy or a probe kind is given and what it returns.

A trial runs a **proxy** (``proxy(ctx) -> ProxyResult``: the student after the proxy, its metrics, per-stage
losses, a per-layer table) and then **probes** (``probes(ctx, model) -> ProbeResult``: metrics and a per-task
table). A plug-in is named in a study as ``package.module:Class``; it is built as ``Class(config, study)`` (its
``proxy`` / ``probes`` section and the :class:`~hylo_search.define.schema.StudyDef`), declares its metrics with the
classmethod ``declared_metrics(config)``, and may subclass :class:`Plugin` or only match its interface.

What ``ctx.runtime`` offers a plug-in (:class:`hylo_search.worker.runtime.StudyRuntime`): ``teacher``,
``tokenizer``, ``definition``, ``device``, ``heldout`` (``[N, T]`` token ids), ``heldout_scores(model) -> (kl,
ce)``, ``agreement(model, length, samples)``, ``training_documents(length, count)`` and ``sequences(length, count,
stream)``.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator


class Plugin:
    """Base of the built-in proxies and probes (a plug-in may subclass it or only match its interface): built as
    ``Class(config, study)``; ``metrics`` lists what it reports (``name@*`` for one per length)."""

    metrics: tuple[str, ...] = ()

    def __init__(self, config: Any, study: Any) -> None:
        self.config = config
        self.study = study

    @classmethod
    def declared_metrics(cls, config: Any) -> list[str]:
        return list(cls.metrics)


@dataclass
class ProxyResult:
    metrics: dict[str, float]
    model: Any
    losses: dict[str, list[float]] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProbeResult:
    metrics: dict[str, float]
    table: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrialContext:
    """What a plug-in sees: the runtime (teacher, tokenizer, held-out data; see the module docstring), the layout,
    the seed, and the student (built lazily through the converted-layer cache, or from the block library)."""

    runtime: Any
    tokens: list[str]
    seed: int
    number: int
    timings: dict[str, float] = field(default_factory=dict)
    cache_stats: dict[str, int] = field(default_factory=dict)
    _student: Any = None

    @property
    def layout(self) -> str:
        return ",".join(self.tokens)

    def student(self) -> Any:
        if self._student is None:
            with timed(self.timings, "upcycle_s"):
                self._student, self.cache_stats = self.runtime.converted.build(self.runtime.teacher, self.tokens)
        return self._student

    def assembled(self) -> Any:
        """The layout built from the block library (no training)."""
        if self._student is None:
            with timed(self.timings, "assemble_s"):
                self._student, self.cache_stats = self.runtime.library.assemble(self.tokens)
        return self._student


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = round(time.perf_counter() - start, 4)
