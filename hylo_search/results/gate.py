"""The promotion gate: does a promoted model deliver what its trial promised?

After ``hylo-search promote`` trains a layout, the gate probes the final model on fresh prompts — seeds from the
study's ``promotion.gate_seed`` on, never the search's — at the study's probe tasks and lengths, with at least
``promotion.gate_samples`` samples per (task, length), through the study's own probe kind (so each metric is
computed exactly as the search computed it). It then compares every probe metric the trial's promise lists (the
exported layout file's ``promise``, see :func:`hylo_search.results.trial.promise_of`), at each length:

* every probe metric is higher-is-better (accuracy, partial credit, answer log-likelihood);
* shortfall = promise - promoted; it *falls short* when shortfall > 2 x sqrt(se_promise^2 + se_gate^2);
* se_gate: the binomial sqrt(p (1 - p) / n) for metrics bounded in [0, 1] (n = samples x tasks), else the spread
  of the gate's :data:`CHUNKS` independent chunks of samples (each its own seed) over sqrt(CHUNKS);
* a promise without a standard error is compared with the gate's own only, and the report says so.

A shortfall warns, or fails the command (exit 1: the inputs were valid and the model is kept; it did not keep
the promise) with ``--gate fail``. The report goes to stdout and, as ``promotion_gate``, into the run's run.json.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from .. import paths
from ..define.schema import ProbeConfig, PromotionConfig
from ..errors import UsageError
from ..scoring import TrialContext, probe_class
from .trial import BOUNDED_PROBE_METRICS

LIMIT_SE = 2.0
CHUNKS = 4  # the gate's samples are drawn in this many seeded chunks, so any metric gets a standard error
RECORD_KEY = "promotion_gate"


@dataclass
class Figure:
    """One metric's value with its standard error (None: unknown), the samples behind it and their seeds."""

    mean: float
    se: float | None
    n: int
    seeds: list[int] = field(default_factory=list)


@dataclass
class Check:
    """One metric at one length: the promise, what the promoted model scored, and the verdict (``ok``,
    ``short``, or ``unjudged`` when neither figure has a standard error)."""

    metric: str
    promise: Figure
    promoted: Figure
    shortfall: float
    limit: float | None
    status: str
    note: str = ""


@dataclass
class GateSpec:
    """What the gate needs from a layout file: the probes, the promise and the promotion settings."""

    probes: dict[str, Any]
    promise: dict[str, Figure]
    settings: PromotionConfig
    promise_trial: int | None = None


def read_spec(data: dict[str, Any], source: Any, gate: str | None = None) -> GateSpec | None:
    """The gate's inputs from a layout file's mapping ``data`` (None when it carries no promise: a hand-written
    file, or a trial without probe metrics). ``gate`` (``warn`` / ``fail``) overrides the file's setting. Raises
    :class:`UsageError` naming the file and field for malformed entries, and when the gate's seeds are seeds the
    search probed with (its prompts would not be fresh)."""
    try:
        settings = PromotionConfig.model_validate(data.get("promotion") or {})
    except ValueError as error:
        raise UsageError(f"{source}: field 'promotion': {str(error).splitlines()[-1].strip()}") from None
    if gate is not None:
        settings = settings.model_copy(update={"gate": gate})
    raw = data.get("promise")
    probes = data.get("probes")
    if not raw:
        return None
    if not isinstance(raw, dict) or not isinstance(probes, dict) or not probes.get("lengths"):
        raise UsageError(f"{source}: field 'promise' needs a mapping of metrics and a 'probes' section with "
                         "lengths (as `hylo-search export` writes them)")
    promise = {}
    for name, entry in raw.items():
        try:
            promise[name] = Figure(float(entry["mean"]), None if entry.get("se") is None else float(entry["se"]),
                                   int(entry.get("n") or 0), [int(s) for s in entry.get("seeds") or []])
        except (KeyError, TypeError, ValueError):
            raise UsageError(f"{source}: field 'promise.{name}': needs mean (a number), se (a number or null), "
                             "n and seeds") from None
    searched = {s for figure in promise.values() for s in figure.seeds}
    clash = searched & set(gate_seeds(settings))
    if clash:
        raise UsageError(f"{source}: field 'promotion.gate_seed': {settings.gate_seed} gives seed(s) "
                         f"{sorted(clash)}, which the search probed with; choose a seed outside {sorted(searched)}")
    return GateSpec(probes, promise, settings, data.get("promise_trial", data.get("trial")))


def gate_seeds(settings: PromotionConfig) -> list[int]:
    return [settings.gate_seed + k for k in range(CHUNKS)]


def measure(model: Any, tokenizer: Any, spec: GateSpec, tokens: list[str], study: Any = None
            ) -> tuple[dict[str, Figure], int]:
    """Probe ``model`` with the study's probe kind on the gate's seeds: ``({metric: Figure}, samples per (task,
    length))``. Each of :data:`CHUNKS` chunks draws ceil(gate_samples / CHUNKS) samples per (task, length) with
    its own seed; equal chunks make their mean the mean over all samples. ``study``: the study definition when
    known (plug-ins may read it)."""
    probes = ProbeConfig.model_validate({k: v for k, v in spec.probes.items() if v is not None})
    per_chunk = math.ceil(spec.settings.gate_samples / CHUNKS)
    plugin = probe_class(probes.kind)(probes.model_copy(update={"samples": per_chunk}), study)
    device = next(model.parameters()).device
    runtime = SimpleNamespace(tokenizer=tokenizer, device=device, teacher=None, definition=study)
    chunks = []
    for seed in gate_seeds(spec.settings):
        chunks.append(plugin(TrialContext(runtime, list(tokens), seed, -1), model).metrics)
    n = per_chunk * CHUNKS * max(1, len(probes.tasks))
    figures = {}
    for name in chunks[0]:
        values = [float(c[name]) for c in chunks if c.get(name) is not None]
        if len(values) != len(chunks):
            continue
        mean = statistics.fmean(values)
        if _bounded(name, mean):
            se = math.sqrt(mean * (1 - mean) / n)
        else:
            se = statistics.stdev(values) / math.sqrt(len(values))
        figures[name] = Figure(mean, se, n, gate_seeds(spec.settings))
    return figures, per_chunk * CHUNKS


def _bounded(name: str, value: float) -> bool:
    return name.partition("@")[0] in BOUNDED_PROBE_METRICS and 0.0 <= value <= 1.0


def judged_metrics(promise: dict[str, Figure]) -> list[str]:
    """The promise's metrics the gate judges: each per-length metric (``name@N``); a bare ``name`` only when the
    promise has no per-length value of it (the bare one repeats the longest length's)."""
    heads = {m.partition("@")[0] for m in promise if "@" in m}
    return sorted((m for m in promise if "@" in m or m not in heads),
                  key=lambda m: (m.partition("@")[0], int(m.partition("@")[2] or 0)))


def compare(promise: dict[str, Figure], promoted: dict[str, Figure]) -> list[Check]:
    checks = []
    for name in judged_metrics(promise):
        want = promise[name]
        got = promoted.get(name)
        if got is None:
            checks.append(Check(name, want, Figure(math.nan, None, 0), math.nan, None, "unjudged",
                                "the study's probes did not report this metric"))
            continue
        shortfall = want.mean - got.mean
        if want.se is None and got.se is None:
            checks.append(Check(name, want, got, shortfall, None, "unjudged", "no standard error on either side"))
            continue
        limit = LIMIT_SE * math.sqrt((want.se or 0.0) ** 2 + (got.se or 0.0) ** 2)
        note = "the promise has no standard error: limit from the gate's own" if want.se is None else ""
        checks.append(Check(name, want, got, shortfall, limit, "short" if shortfall > limit else "ok", note))
    return checks


def verdict(checks: list[Check]) -> str:
    """``passed`` (every judged metric within its limit), ``short`` (some metric fell short) or ``unjudged``."""
    if any(c.status == "short" for c in checks):
        return "short"
    return "passed" if any(c.status == "ok" for c in checks) else "unjudged"


def report(checks: list[Check], spec: GateSpec, samples: int, mode: str) -> str:
    """The lines ``promote`` prints."""
    seeds = gate_seeds(spec.settings)
    searched = sorted({s for c in checks for s in c.promise.seeds})
    lines = [f"promotion gate: {samples} fresh probe samples per (task, length), seeds {seeds[0]}..{seeds[-1]} "
             f"(the search probed with seed(s) {', '.join(map(str, searched)) or 'unknown'}); "
             f"promise of trial {spec.promise_trial}",
             f"  {'metric':<22}{'promised':>18}{'promoted':>18}{'shortfall':>11}{'limit':>9}  verdict"]

    def fmt(f: Figure) -> str:
        return f"{f.mean:.3f} ± {f.se:.3f}" if f.se is not None else f"{f.mean:.3f} (no SE)"

    for c in checks:
        limit = f"{c.limit:.3f}" if c.limit is not None else "-"
        lines.append(f"  {c.metric:<22}{fmt(c.promise):>18}{fmt(c.promoted):>18}{c.shortfall:>11.3f}{limit:>9}  "
                     f"{c.status}" + (f" ({c.note})" if c.note else ""))
    outcome = verdict(checks)
    if outcome == "short":
        short = ", ".join(c.metric for c in checks if c.status == "short")
        lines.append(f"gate {'FAILED' if mode == 'fail' else 'warning'}: the promoted model falls short of the "
                     f"promise by more than {LIMIT_SE:g} standard errors at {short}")
    elif outcome == "passed":
        lines.append(f"gate passed: within {LIMIT_SE:g} standard errors of the promise at every judged length")
    else:
        lines.append("gate: nothing could be judged (no standard errors)")
    return "\n".join(lines)


def record(run_root: Path, checks: list[Check], spec: GateSpec, samples: int, mode: str) -> dict[str, Any]:
    """Add the gate's outcome to the run's run.json (``promotion_gate``, replaced on a rerun) and return it."""
    entry = {"verdict": verdict(checks), "mode": mode, "seeds": gate_seeds(spec.settings), "samples": samples,
             "limit_se": LIMIT_SE, "promise_trial": spec.promise_trial, "probes": spec.probes,
             "checks": [asdict(c) for c in checks]}
    path = Path(run_root) / "run.json"
    meta = json.loads(path.read_text())
    meta[RECORD_KEY] = entry
    # NaN (a metric the probes did not report) is written as null: run.json stays strict JSON.
    paths.atomic_write_text(path, json.dumps(_finite(meta), indent=2, sort_keys=True))
    return entry


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def run_gate(model: Any, tokenizer: Any, spec: GateSpec, tokens: list[str], run_root: Path, study: Any = None
             ) -> tuple[str, str]:
    """Measure, compare, record: ``(verdict, report text)``."""
    if spec.probes.get("kind") in ("agreement", "none"):
        text = (f"promotion gate: not run (probes kind {spec.probes.get('kind')!r} scores against the study's "
                "held-out data; only task probes are re-drawn with fresh prompts)")
        return "unjudged", text
    promoted, samples = measure(model, tokenizer, spec, tokens, study)
    checks = compare(spec.promise, promoted)
    record(run_root, checks, spec, samples, spec.settings.gate)
    return verdict(checks), report(checks, spec, samples, spec.settings.gate)


__all__ = ["CHUNKS", "Check", "Figure", "GateSpec", "compare", "gate_seeds", "judged_metrics", "measure",
           "read_spec", "record", "report", "run_gate", "verdict"]
