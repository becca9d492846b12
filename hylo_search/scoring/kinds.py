"""What a trial measures, behind one plug-in interface.

A trial runs a **proxy** (``proxy(ctx) -> ProxyResult``: the student after the proxy, its metrics, per-stage
losses, a per-layer table) and then **probes** (``probes(ctx, model) -> ProbeResult``: metrics and a per-task
table). Exact memory metrics (:func:`memory_metrics`) are computed by the driver before any work.

Built-in kinds, chosen in the study's ``proxy.kind`` / ``probes.kind``:

==============  ========================================================================  =======================
kind            what it is                                                                metrics
==============  ========================================================================  =======================
``recipe``      the training issue's recipe, in-process (:mod:`hylo_model.train`)          proxy_kl, proxy_loss
``upcycle_kl``  stand-in: the upcycled student, untrained, scored exactly on held-out      proxy_kl, proxy_loss,
                sequences (KL to the teacher, cross-entropy) + per-layer reconstruction    recon_error
``assembled``   the layout built from the block library (no training; optional short       proxy_kl, proxy_loss
                distill), scored on the held-out sequences: the cheap first tier
``ruler``       RULER-style probes (:mod:`hylo_search.probes`)                             probe_accuracy[@N]
``agreement``   stand-in: top-1 agreement with the teacher on the last quarter of held-   probe_accuracy[@N]
                out sequences of each probe length
``none``        no probes                                                                  -
==============  ========================================================================  =======================

``auto`` picks ``recipe`` / ``ruler`` when that code is importable, else the stand-in; the choice is part of the
study's fingerprint, so a resumed study never mixes the two. A plug-in is ``package.module:Class``, with the
interface of :class:`Plugin`: built as ``Class(config, study)``, ``declared_metrics(config)`` a classmethod, and
called as ``proxy(ctx) -> ProxyResult`` or ``probes(ctx, model) -> ProbeResult``.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .errors import UsageError
from .study import MEMORY_METRICS, ProbeConfig, ProxyConfig

if TYPE_CHECKING:
    from .runtime import TrialContext
    from .study import LoadedStudy


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


# ------------------------------------------------------------------------------------------- kind resolution
def _train_api() -> Callable[..., Any] | None:
    """``hylo_model.train.run_recipe`` when the training issue's code is installed, else None."""
    try:
        module = importlib.import_module("hylo_model.train")
    except ImportError:
        return None
    return getattr(module, "run_recipe", None)


def _probes_api() -> Callable[..., Any] | None:
    try:
        module = importlib.import_module("hylo_search.probes")
    except ImportError:
        return None
    return getattr(module, "run_probes", None)


def _plugin(kind: str, source: Any) -> type:
    module_name, _, attr = kind.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"{source}: plug-in {kind!r} cannot be imported ({type(error).__name__}: {error})") from None


def recipe_problem(config: ProxyConfig) -> str | None:
    """Why ``config.recipe`` cannot run here (training code missing, recipe not found), or None."""
    if _train_api() is None:
        return "hylo_model.train (issue 4) is not importable"
    from hylo_model.train import load_recipe

    try:
        load_recipe(config.recipe)
    except ValueError as error:
        return str(error)
    return None


def resolve_proxy_kind(config: ProxyConfig, source: Any = "", field: str = "proxy") -> tuple[str, str | None]:
    """(the proxy kind to use, a problem that stops trials from running or None); ``field`` names the config in
    messages (``proxy``, or ``tiers.first`` for a first tier).

    ``auto`` takes the recipe when the training code is installed, else the stand-in. A recipe that cannot run
    (not shipped, training code missing) is not a validation error — the study is well formed and the recipe
    belongs to the training code — but stops ``study`` before any trial, with the reason."""
    kind = config.kind
    if kind in ("auto", "recipe") and not config.recipe:
        if kind == "recipe":
            raise UsageError(f"{source}: field '{field}.recipe': kind 'recipe' needs a recipe name")
        return "upcycle_kl", None
    if kind == "auto":
        kind = "recipe" if _train_api() is not None else "upcycle_kl"
    if kind not in PROXIES and ":" not in kind:
        raise UsageError(f"{source}: field '{field}.kind': unknown proxy {kind!r}; allowed: auto, "
                         f"{', '.join(PROXIES)}, or package.module:Class")
    if ":" in kind:
        _plugin(kind, source)
    problem = recipe_problem(config) if kind == "recipe" or (kind == "assembled" and config.recipe) else None
    return kind, (f"{source}: field '{field}.recipe': {problem}" if problem else None)


def resolve_probe_kind(config: ProbeConfig, source: Any = "") -> tuple[str, str | None]:
    """(the probes kind to use, a problem that stops trials from running or None); ``auto`` takes the RULER-style
    probes when :mod:`hylo_search.probes` is installed and tasks are named, else the agreement stand-in."""
    kind = config.kind
    if kind == "auto":
        kind = "none" if not config.lengths else "ruler" if config.tasks and _probes_api() else "agreement"
    if kind not in PROBES and ":" not in kind:
        raise UsageError(f"{source}: field 'probes.kind': unknown probes {kind!r}; allowed: auto, "
                         f"{', '.join(PROBES)}, or package.module:Class")
    if ":" in kind:
        _plugin(kind, source)
    elif kind != "none" and not config.lengths:
        raise UsageError(f"{source}: field 'probes.lengths': probes {kind!r} need at least one length")
    if kind == "ruler" and _probes_api() is None:
        return kind, f"{source}: field 'probes.kind': 'ruler' needs hylo_search.probes (issue 5), not importable"
    if kind == "ruler":
        from .probes import SCORERS, parse_tasks

        try:
            parse_tasks(list(config.tasks))
        except ValueError as error:
            raise UsageError(f"{source}: field 'probes.tasks': {error}") from None
        if config.scorer not in SCORERS:
            raise UsageError(f"{source}: field 'probes.scorer': unknown scorer {config.scorer!r}; "
                             f"allowed: {', '.join(SCORERS)}")
    return kind, None


def proxy_class(kind: str) -> type:
    return PROXIES[kind] if kind in PROXIES else _plugin(kind, "proxy")


def probe_class(kind: str) -> type:
    return PROBES[kind] if kind in PROBES else _plugin(kind, "probes")


def available_metrics(loaded: LoadedStudy) -> list[str]:
    """Every metric name an objective of this study may use (``*`` stands for a length); with two tiers, the
    proxy metrics both tiers report."""
    definition = loaded.definition
    names = list(MEMORY_METRICS) + ["cache_bytes@*"]
    proxied = proxy_class(loaded.proxy_kind).declared_metrics(definition.proxy)
    if loaded.first_kind is not None:
        first = proxy_class(loaded.first_kind).declared_metrics(definition.tiers.first)
        proxied = [m for m in proxied if m in first]
    names += proxied
    names += probe_class(loaded.probe_kind).declared_metrics(definition.probes)
    return names


def metric_allowed(metric: str, allowed: list[str]) -> bool:
    if metric in allowed:
        return True
    head, at, length = metric.partition("@")
    return bool(at) and length.isdigit() and f"{head}@*" in allowed


def memory_metrics(loaded: LoadedStudy, tokens: list[str]) -> dict[str, float]:
    """Exact cache bytes (at the target length and any length an objective names) and parameter counts."""
    costs, space = loaded.space.costs, loaded.space
    lengths = {loaded.definition.target_length}
    lengths |= {int(m.split("@")[1]) for m in loaded.metrics if m.startswith("cache_bytes@")}
    values: dict[str, float] = {}
    for length in sorted(lengths):
        values[f"cache_bytes@{length}"] = costs.layout_cache(tokens, length)
    target = loaded.definition.target_length
    values["cache_bytes"] = values[f"cache_bytes@{target}"]
    values["teacher_cache_bytes"] = costs.layout_cache(space.teacher_tokens, target)
    values["cache_ratio"] = values["cache_bytes"] / values["teacher_cache_bytes"]
    values["params"] = costs.layout_params(tokens)
    values["teacher_params"] = costs.layout_params(space.teacher_tokens)
    values["params_ratio"] = values["params"] / values["teacher_params"]
    return values


# ---------------------------------------------------------------------------------------------- stand-ins
class UpcycleKL(Plugin):
    """Stand-in proxy: the upcycled student without training, scored exactly against the teacher on the study's
    held-out sequences: mean per-token KL(teacher || student), the student's next-token cross-entropy, and each
    layer's reconstruction error (its mixer fed the teacher's own hidden state, :func:`layer_reconstruction`)."""

    metrics = ("proxy_kl", "proxy_loss", "recon_error")

    def __call__(self, ctx: TrialContext) -> ProxyResult:
        from hylo_model.upcycle import layer_reconstruction

        student = ctx.student()
        kl, ce = ctx.runtime.heldout_scores(student)
        reports = layer_reconstruction(student, ctx.runtime.teacher, ctx.runtime.heldout[:2])
        layers = [{"layer": r.layer, "mixer": r.mixer, "relative_error": r.relative_error, "cosine": r.cosine,
                   "finite": r.finite} for r in reports]
        converted = [r.relative_error for r in reports if r.mixer != "attention"]
        recon = sum(converted) / len(converted) if converted else 0.0
        return ProxyResult({"proxy_kl": kl, "proxy_loss": ce, "recon_error": recon}, student,
                           losses={"heldout": [ce]}, layers=layers)


class Agreement(Plugin):
    """Stand-in probes: at each probe length, the fraction of positions in the last quarter of ``samples``
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


def _probe_metrics(rows: list[dict[str, Any]]) -> ProbeResult:
    """``probe_accuracy@N``: mean over tasks at length N; ``probe_accuracy``: the same at the longest length."""
    metrics: dict[str, float] = {}
    lengths = sorted({int(r["length"]) for r in rows})
    for length in lengths:
        scores = [float(r["accuracy"]) for r in rows if int(r["length"]) == length]
        metrics[f"probe_accuracy@{length}"] = sum(scores) / len(scores)
    if lengths:
        metrics["probe_accuracy"] = metrics[f"probe_accuracy@{lengths[-1]}"]
    return ProbeResult(metrics, rows)


# ------------------------------------------------------------------------------- adapters to the real code
class RecipeProxy(Plugin):
    """The proxy the issue asks for: the training issue's recipe (align -> distill with a small token budget) run
    in-process by ``hylo_model.train.run_recipe`` on the upcycled student; its held-out KL is ``proxy_kl``."""

    metrics = ("proxy_kl", "proxy_loss")

    def __call__(self, ctx: TrialContext) -> ProxyResult:
        # The student comes from the layer cache (upcycled with the study's options) and is trained in place;
        # nothing is written (out_dir None). The teacher is shared with the other trials of this process:
        # run_recipe restores what it changes on it (RoPE of a long stage).
        student = ctx.student()
        result = train_recipe(ctx, student, self.config.recipe, self.config.tokens, self.config.options)
        return normalise_recipe_result(result, student)


def train_recipe(ctx: TrialContext, student: Any, recipe: Any, tokens: int | None,
                 options: dict[str, Any] | None = None) -> Any:
    """``run_recipe`` on ``student`` in place with the study's data, rescaled to ``tokens``, writing nothing."""
    run_recipe = _train_api()
    if run_recipe is None:
        raise RuntimeError("training a proxy needs hylo_model.train.run_recipe (issue 4), not importable here")
    return run_recipe(ctx.runtime.teacher, student, recipe, None, tokenizer=ctx.runtime.tokenizer,
                      data=recipe_data(ctx.runtime, tokens), progress="off", tokens=tokens, seed=ctx.seed,
                      **(options or {}))


def recipe_data(runtime: Any, tokens: int | None) -> Any:
    """The study's data for a recipe: a path / ``hf:`` source as is; a built-in source as token documents in
    memory (about 1.25x the token budget, at least 64 sequences), drawn apart from the held-out set."""
    data = runtime.definition.data
    if not data.source.startswith("builtin:"):
        return data.source
    count = max(64, math.ceil(1.25 * (tokens or 0) / data.heldout_length))
    return runtime.training_documents(data.heldout_length, count)


class AssembledProxy(Plugin):
    """The cheap tier: the layout assembled from the block library (:mod:`hylo_search.library`; each converted
    layer's mixer trained once, alone, by the align stage) with no training at all, scored like ``upcycle_kl`` on
    the study's held-out sequences. With ``tokens``, a short global distill on top first: the distill stages of
    ``recipe`` (default: the library's recipe) rescaled to that budget."""

    metrics = ("proxy_kl", "proxy_loss")

    def __call__(self, ctx: TrialContext) -> ProxyResult:
        student = ctx.assembled()
        details: dict[str, Any] = {"library_blocks": ctx.cache_stats.get("library_blocks", 0)}
        losses: dict[str, list[float]] = {}
        if self.config.tokens:
            from hylo_model.train import load_recipe

            name = self.config.recipe or self.study.library_recipe()
            recipe = load_recipe(name)
            stages = [s for s in recipe.stages if s.kind != "align"]
            if not stages:
                raise RuntimeError(f"recipe {name!r} has no distill stage to run on the assembled layout")
            result = train_recipe(ctx, student, recipe.model_copy(update={"stages": stages}), self.config.tokens,
                                  self.config.options)
            details.update(normalise_recipe_result(result, student).details)
            losses = {str(k): [float(x) for x in v] for k, v in result.losses.items()}
        kl, ce = ctx.runtime.heldout_scores(student)
        return ProxyResult({"proxy_kl": kl, "proxy_loss": ce}, student, losses={**losses, "heldout": [ce]},
                           details=details)


def normalise_recipe_result(result: Any, student: Any) -> ProxyResult:
    """A :class:`hylo_model.train.TrainResult` (or a mapping like it: ``heldout_kl``, ``heldout_loss``, per-stage
    ``losses``, ``stages`` with held-out scores before/after each, the trained ``model``) as a ProxyResult."""
    data = dict(result) if isinstance(result, dict) else dict(vars(result))
    kl = data.get("heldout_kl")
    if kl is None:
        raise RuntimeError(f"run_recipe returned no held-out KL (keys: {sorted(data)})")
    losses = {str(k): [float(x) for x in v] for k, v in (data.get("losses") or {}).items()}
    final = [v[-1] for v in losses.values() if v]
    loss = data.get("heldout_loss")
    metrics = {"proxy_kl": float(kl), "proxy_loss": float(loss if loss is not None else final[-1] if final else kl)}
    stages = []
    for stage in data.get("stages") or []:
        stage = stage if isinstance(stage, dict) else vars(stage)
        stages.append({"name": stage.get("name"), "kind": stage.get("kind"), "steps": stage.get("steps"),
                       "tokens": stage.get("tokens"), "seconds": stage.get("seconds"),
                       "kl_before": (stage.get("eval_before") or {}).get("kl"),
                       "kl_after": (stage.get("eval_after") or {}).get("kl")})
    details = {"recipe": data.get("recipe"), "stages": stages}
    return ProxyResult(metrics, data.get("model") or student, losses=losses, details=details)


class RulerProbes(Plugin):
    """RULER-style probes from :mod:`hylo_search.probes` (issue 5): ``run_probes(model, tokenizer, tasks, lengths,
    samples, scorer, seed)``; rows with task, length and accuracy (or score) become the probe table."""

    metrics = ("probe_accuracy", "probe_accuracy@*")

    def __call__(self, ctx: TrialContext, model: Any) -> ProbeResult:
        run_probes = _probes_api()
        if run_probes is None:
            raise RuntimeError("probes kind 'ruler' needs hylo_search.probes.run_probes (issue 5), not importable here")
        if ctx.runtime.tokenizer is None:
            raise RuntimeError("probes kind 'ruler' needs a tokenizer; the teacher has none and the study names none")
        result = run_probes(model, ctx.runtime.tokenizer, tasks=list(self.config.tasks),
                            lengths=list(self.config.lengths), samples=self.config.samples,
                            scorer=self.config.scorer, seed=ctx.seed, **self.config.options)
        return _probe_metrics(normalise_probe_rows(result, self.config.samples))


def normalise_probe_rows(result: Any, samples: int | None = None) -> list[dict[str, Any]]:
    """Rows ``{task, length, accuracy, ...}``: one per (task, length) cell of a :class:`ProbeResults`
    (``summary()``), or from a list of mappings/objects, a pandas DataFrame, or an object with ``rows``/``table``."""
    if callable(getattr(result, "summary", None)):
        return [{"task": task, "length": int(length), "samples": samples, "accuracy": float(score)}
                for task, by_length in result.summary().items() for length, score in by_length.items()]
    if hasattr(result, "to_dict") and hasattr(result, "columns"):
        rows = result.to_dict("records")
    else:
        rows = getattr(result, "rows", None) or getattr(result, "table", None) or result
        rows = [dict(r) if isinstance(r, dict) else dict(vars(r)) for r in rows]
    clean = []
    for row in rows:
        score = row.get("accuracy", row.get("score"))
        if score is None or "length" not in row:
            raise RuntimeError(f"probe row without length and accuracy/score: {row}")
        clean.append({**{k: v for k, v in row.items() if _json_scalar(v)}, "accuracy": float(score),
                      "length": int(row["length"])})
    return clean


def _json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int)) or (isinstance(value, float) and math.isfinite(value))


PROXIES: dict[str, type] = {"recipe": RecipeProxy, "upcycle_kl": UpcycleKL, "assembled": AssembledProxy}
PROBES: dict[str, type] = {"ruler": RulerProbes, "agreement": Agreement, "none": NoProbes}
