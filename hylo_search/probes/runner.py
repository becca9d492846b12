"""Score a model on probes: :func:`run_probes` (generate samples, then score) and :func:`score_samples`.

Two scorers:

* ``"generate"`` — RULER's protocol: greedy decoding of up to the task's ``max_new_tokens``, the prediction
  post-processed and scored with the task's ``string_match_all`` / ``string_match_part``. ``score`` is that
  per-sample value in 0..1.
* ``"fast"`` — one teacher-forced pass over ``prompt + canonical answer`` (the search's proxy). ``score`` is
  ``greedy_all`` (1 when every answer token is the argmax), with ``first_token``, the partial credit ``partial``
  (the fraction of answer tokens that are the argmax) and the answer log-likelihood (``logprob``, and per answer
  token ``logprob_mean``: the continuous score the search's probe objective uses by default) beside it. A model that greedily writes the canonical answer scores 1 under
  both scorers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from . import tasks as task_specs
from .generate import Sample, count_tokens, generate_samples
from .metrics import postprocess_pred, score_prediction
from .scoring import CausalLM, answer_token_ids, eos_ids, greedy_generate, teacher_forced

SCORERS = ("fast", "generate")
FAST_METRICS = ("score", "first_token", "partial", "logprob", "logprob_mean")
# Rows of one batch may differ this much in length (their padding is computed for nothing).
_MAX_SPREAD = 256


@dataclass
class ProbeResults:
    """Per-sample records and the settings that produced them.

    Each record: ``task``, ``length`` (the requested length), ``index``, ``tokens`` (prompt + max_new_tokens),
    ``score`` (0..1) and ``seconds`` (this sample's share of its batch's wall time); ``prediction`` for the
    generation scorer; ``first_token``, ``logprob``, ``logprob_mean``, ``answer_tokens`` for the fast one."""

    records: list[dict[str, Any]]
    scorer: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r["task"] for r in self.records))

    @property
    def lengths(self) -> list[int]:
        return sorted({r["length"] for r in self.records})

    def summary(self, metric: str = "score") -> dict[str, dict[int, float]]:
        """``{task: {length: mean of metric}}``."""
        groups: dict[tuple[str, int], list[float]] = {}
        for r in self.records:
            groups.setdefault((r["task"], r["length"]), []).append(float(r[metric]))
        out: dict[str, dict[int, float]] = {}
        for (task, length), values in groups.items():
            out.setdefault(task, {})[length] = sum(values) / len(values)
        return out

    def mean(self, metric: str = "score", task: str | None = None, length: int | None = None) -> float:
        """Mean of ``metric`` over the (task, length) cells (each cell weighs the same), optionally one task or
        one length only; nan when nothing matches."""
        cells = [v for t, by_length in self.summary(metric).items() if task in (None, t)
                 for n, v in by_length.items() if length in (None, n)]
        return sum(cells) / len(cells) if cells else math.nan

    def seconds_per_sample(self) -> dict[str, dict[int, float]]:
        return self.summary("seconds")

    def table(self, metric: str = "score", title: str | None = None):
        """A rich Table: tasks × lengths, percent for 0..1 metrics, plus a mean column and row."""
        from rich.table import Table

        summary, lengths = self.summary(metric), self.lengths
        percent = metric in ("score", "first_token", "partial")
        fmt = (lambda v: f"{100 * v:.1f}") if percent else (lambda v: f"{v:.3f}")
        table = Table(title=title or f"{metric} ({self.scorer} scorer{', %' if percent else ''})")
        table.add_column("task")
        for n in lengths:
            table.add_column(task_specs.format_length(n), justify="right")
        table.add_column("mean", justify="right")
        for task in self.tasks:
            row = summary[task]
            table.add_row(task, *[fmt(row[n]) if n in row else "-" for n in lengths], fmt(self.mean(metric, task)))
        if len(self.tasks) > 1:
            table.add_row("mean", *[fmt(self.mean(metric, length=n)) for n in lengths], fmt(self.mean(metric)),
                          style="bold")
        return table

    def to_dict(self) -> dict[str, Any]:
        metrics = ["score", "seconds"] + (list(FAST_METRICS[1:]) if self.scorer == "fast" else [])
        return {
            "scorer": self.scorer,
            "config": self.config,
            "mean": self.mean(),
            "summary": {m: {t: {str(n): v for n, v in row.items()} for t, row in self.summary(m).items()}
                        for m in metrics},
            "records": self.records,
        }


def _batches(samples: list[Sample], size: int) -> Iterable[list[int]]:
    """Indices in length order, cut into batches of at most ``size`` rows of similar length."""
    order = sorted(range(len(samples)), key=lambda i: samples[i].length)
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == size or samples[i].length - samples[batch[0]].length > _MAX_SPREAD):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def score_samples(
    model,
    tokenizer,
    samples: list[Sample],
    scorer: str = "fast",
    batch_size: int = 1,
    segment_size: int | None = 8192,
    progress: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Score ready-made samples (e.g. read from JSONL); one record per sample, in the samples' order."""
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer {scorer!r}; allowed: {', '.join(SCORERS)}")
    lm = CausalLM(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stop = eos_ids(model, tokenizer)
    records: list[dict[str, Any] | None] = [None] * len(samples)
    for batch in _batches(samples, max(1, batch_size)):
        rows = [samples[i] for i in batch]
        prompts = [tokenizer(s.prompt, add_special_tokens=True, verbose=False)["input_ids"] for s in rows]
        start = time.perf_counter()
        if scorer == "generate":
            outputs = greedy_generate(lm, prompts, max(s.max_new_tokens for s in rows), stop, pad, segment_size)
            extra = []
            for s, out in zip(rows, outputs):
                text = tokenizer.decode(out[:s.max_new_tokens], skip_special_tokens=True)
                metric = task_specs.get_task(s.task).metric
                extra.append({"score": score_prediction(metric, text, s.outputs),
                              "prediction": postprocess_pred(text)})
        else:
            answers = [answer_token_ids(tokenizer, p, s.prompt, s.answer) for p, s in zip(prompts, rows)]
            extra = [{"score": float(r.greedy_all), "first_token": float(r.first_token), "partial": r.partial,
                      "logprob": r.logprob, "logprob_mean": r.logprob_mean, "answer_tokens": r.answer_tokens}
                     for r in teacher_forced(lm, prompts, answers, pad, segment_size)]
        seconds = (time.perf_counter() - start) / len(rows)
        for i, s, p, e in zip(batch, rows, prompts, extra):
            records[i] = {"task": s.task, "length": s.max_length, "index": s.index,
                          "tokens": len(p) + s.max_new_tokens, "seconds": seconds, **e}
        if progress is not None:
            progress(len(batch))
    return records  # type: ignore[return-value]


def run_probes(
    model,
    tokenizer,
    tasks: str | list[str] = "niah_single_1",
    lengths: str | list[int | str] = (4096,),
    samples: int = 50,
    scorer: str = "fast",
    seed: int = 0,
    *,
    batch_size: int = 1,
    segment_size: int | None = 8192,
    depth: float | None = None,
    haystack: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ProbeResults:
    """Generate ``samples`` probes per (task, length) with ``tokenizer`` and score ``model`` on them.

    ``tasks``: names, ``"all"`` or a comma list; ``lengths``: tokens or ``"4k"``-style strings. The same
    (tasks, lengths, samples, seed, tokenizer) always gives the same prompts. Returns :class:`ProbeResults`;
    ``.mean()`` is the search's single number, ``.summary()`` the task × length grid."""
    names = task_specs.parse_tasks(tasks)
    sizes = task_specs.parse_lengths(list(lengths) if not isinstance(lengths, str) else lengths)
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    probes = [s for task in names for n in sizes
              for s in generate_samples(task, n, samples, tokenizer, seed, depth, haystack)]
    records = score_samples(model, tokenizer, probes, scorer, batch_size, segment_size, progress)
    config = {"tasks": names, "lengths": sizes, "samples": samples, "seed": seed, "scorer": scorer,
              "batch_size": batch_size, "segment_size": segment_size, "depth": depth, "haystack": haystack,
              "model": getattr(getattr(model, "config", None), "_name_or_path", None) or type(model).__name__}
    return ProbeResults(records, scorer, config)


__all__ = ["FAST_METRICS", "SCORERS", "ProbeResults", "count_tokens", "run_probes", "score_samples"]
