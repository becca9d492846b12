"""The built-in probe kinds: ``ruler`` (RULER-style probes, :mod:`hylo_search.probes`), ``agreement`` (top-1
agreement with the teacher on held-out text) and ``none``, and the adapter from
:class:`~hylo_search.probes.ProbeResults` to a :class:`~.api.ProbeResult`."""

from __future__ import annotations

from typing import Any

from ..probes import ProbeResults, run_probes
from .api import Plugin, ProbeResult, TrialContext


class Agreement(Plugin):
    """At each probe length, the fraction of positions in the last quarter of ``samples``
    held-out sequences where the student's top-1 token equals the teacher's (1.0 for the teacher itself)."""

    metrics = ("probe_accuracy", "probe_accuracy@*")

    def __call__(self, ctx: TrialContext, model: Any) -> ProbeResult:
        rows = []
        for length in sorted(self.config.lengths):
            accuracy = ctx.runtime.agreement(model, length, self.config.samples)
            rows.append({"task": "teacher_agreement", "length": length, "samples": self.config.samples,
                         "accuracy": accuracy})
        return _probe_metrics(rows)


class NoProbes(Plugin):
    def __call__(self, ctx: TrialContext, model: Any) -> ProbeResult:
        return ProbeResult({})


# Probe-table columns and the metric each one becomes (a mean over tasks at each length).
SCORES = {"accuracy": "probe_accuracy", "partial": "probe_partial", "logprob": "probe_logprob"}


def _probe_metrics(rows: list[dict[str, Any]]) -> ProbeResult:
    """For each score column the rows hold (``accuracy``; ``partial`` and ``logprob`` from the fast scorer):
    ``probe_<score>@N``, the mean over tasks at length N, and ``probe_<score>``, the same at the longest length."""
    metrics: dict[str, float] = {}
    lengths = sorted({int(r["length"]) for r in rows})
    for column, name in SCORES.items():
        if not rows or any(r.get(column) is None for r in rows):
            continue
        for length in lengths:
            scores = [float(r[column]) for r in rows if int(r["length"]) == length]
            metrics[f"{name}@{length}"] = sum(scores) / len(scores)
        metrics[name] = metrics[f"{name}@{lengths[-1]}"]
    return ProbeResult(metrics, rows)


class RulerProbes(Plugin):
    """RULER-style probes (:func:`hylo_search.probes.run_probes`): one probe-table row per (task, length), with the
    exact accuracy and, from the fast scorer, the continuous scores: ``probe_logprob`` (the answer's mean per-token
    log-likelihood under teacher forcing, <= 0) and ``probe_partial`` (the fraction of answer tokens that are the
    argmax). Exact accuracy moves in steps of 1/samples and is 0 for most converted layouts of a small proxy; the
    continuous scores rank them."""

    metrics = ("probe_accuracy", "probe_accuracy@*", "probe_partial", "probe_partial@*", "probe_logprob",
               "probe_logprob@*")

    @classmethod
    def declared_metrics(cls, config: Any) -> list[str]:
        fast = getattr(config, "scorer", "fast") == "fast"
        return [m for m in cls.metrics if fast or m.startswith("probe_accuracy")]

    def __call__(self, ctx: TrialContext, model: Any) -> ProbeResult:
        if ctx.runtime.tokenizer is None:
            raise RuntimeError("probes kind 'ruler' needs a tokenizer; the teacher has none and the study names none")
        result = run_probes(model, ctx.runtime.tokenizer, tasks=list(self.config.tasks),
                            lengths=list(self.config.lengths), samples=self.config.samples,
                            scorer=self.config.scorer, seed=ctx.seed, **self.config.options)
        return _probe_metrics(normalise_probe_rows(result, self.config.samples))


def normalise_probe_rows(result: ProbeResults, samples: int | None = None) -> list[dict[str, Any]]:
    """Rows ``{task, length, samples, accuracy[, partial, logprob]}``: one per (task, length) cell of ``result``
    (``logprob``: the mean over samples of the per-token answer log-likelihood)."""
    if not isinstance(result, ProbeResults):
        raise TypeError(f"expected hylo_search.probes.ProbeResults, got {type(result).__name__}")
    columns = {"accuracy": "score"}
    if result.scorer == "fast":
        columns.update(partial="partial", logprob="logprob_mean")
    summaries = {column: result.summary(metric) for column, metric in columns.items()}
    return [{"task": task, "length": int(length), "samples": samples,
             **{column: float(summary[task][length]) for column, summary in summaries.items()}}
            for task, by_length in summaries["accuracy"].items() for length in by_length]
