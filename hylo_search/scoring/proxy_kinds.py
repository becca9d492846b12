"""The built-in proxy kinds: ``recipe`` (a training recipe in-process), ``upcycle_kl`` (the untrained upcycled
student) and ``assembled`` (the layout built from the block library), and the adapter from a training run's
:class:`~hylo_model.train.TrainResult` to a :class:`~.api.ProxyResult`."""

from __future__ import annotations

import math
from typing import Any

from hylo_model.train import TrainResult, load_recipe, run_recipe
from hylo_model.upcycle import layer_reconstruction

from .api import Plugin, ProxyResult, TrialContext


class UpcycleKL(Plugin):
    """The upcycled student without training, scored exactly against the teacher on the study's
    held-out sequences: mean per-token KL(teacher || student), the student's next-token cross-entropy, and each
    layer's reconstruction error (its mixer fed the teacher's own hidden state, :func:`layer_reconstruction`)."""

    metrics = ("proxy_kl", "proxy_loss", "recon_error")

    def __call__(self, ctx: TrialContext) -> ProxyResult:
        student = ctx.student()
        kl, ce = ctx.runtime.heldout_scores(student)
        reports = layer_reconstruction(student, ctx.runtime.teacher, ctx.runtime.heldout[:2])
        layers = [{"layer": r.layer, "mixer": r.mixer, "relative_error": r.relative_error, "cosine": r.cosine,
                   "finite": r.finite} for r in reports]
        converted = [r.relative_error for r in reports if r.mixer != "attention"]
        recon = sum(converted) / len(converted) if converted else 0.0
        return ProxyResult({"proxy_kl": kl, "proxy_loss": ce, "recon_error": recon}, student,
                           losses={"heldout": [ce]}, layers=layers)


class RecipeProxy(Plugin):
    """A training recipe (align -> distill with a small token budget) run in-process by
    :func:`hylo_model.train.run_recipe` on the upcycled student; its held-out KL is ``proxy_kl``."""

    metrics = ("proxy_kl", "proxy_loss")

    def __call__(self, ctx: TrialContext) -> ProxyResult:
        # The student comes from the converted-layer cache (upcycled with the study's options) and is trained in place;
        # nothing is written (out_dir None). The teacher is shared with the other trials of this process:
        # run_recipe restores what it changes on it (RoPE of a long stage).
        student = ctx.student()
        result = train_recipe(ctx, student, self.config.recipe, self.config.tokens, self.config.options)
        return normalise_recipe_result(result, student)


def train_recipe(ctx: TrialContext, student: Any, recipe: Any, tokens: int | None,
                 options: dict[str, Any] | None = None) -> Any:
    """``run_recipe`` on ``student`` in place with the study's data (``options`` may say ``data: null`` for the
    recipe's own data, as promotion trains), rescaled to ``tokens``, writing nothing. The trial's seed sets the
    data order; the held-out split is the study's (its data seed, unless the recipe pins a ``split_seed``), so every
    trial and every replicate of a study is scored on the same held-out documents."""
    recipe = load_recipe(recipe)
    split = ctx.runtime.definition.data_seed if recipe.split_seed is None else recipe.split_seed
    recipe = recipe.with_seed(ctx.seed, split_seed=split)
    kwargs = {"data": recipe_data(ctx.runtime, tokens), **(options or {})}
    return run_recipe(ctx.runtime.teacher, student, recipe, None, tokenizer=ctx.runtime.tokenizer, progress="off",
                      tokens=tokens, **kwargs)


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


def normalise_recipe_result(result: TrainResult, student: Any) -> ProxyResult:
    """A training run's result as a ProxyResult: held-out KL and loss after the last stage, per-stage losses, and
    each stage's held-out KL before and after it."""
    if not isinstance(result, TrainResult):
        raise TypeError(f"expected a hylo_model.train.TrainResult, got {type(result).__name__}")
    if result.heldout_kl is None:
        raise RuntimeError(f"the recipe {result.recipe!r} evaluated no held-out KL")
    losses = {str(k): [float(x) for x in v] for k, v in result.losses.items()}
    final = [v[-1] for v in losses.values() if v]
    loss = result.heldout_loss
    metrics = {"proxy_kl": float(result.heldout_kl),
               "proxy_loss": float(loss if loss is not None else final[-1] if final else result.heldout_kl)}
    stages = [{"name": s.name, "kind": s.kind, "steps": s.steps, "tokens": s.tokens, "seconds": s.seconds,
               "kl_before": s.eval_before.get("kl"), "kl_after": s.eval_after.get("kl")} for s in result.stages]
    details = {"recipe": result.recipe, "stages": stages}
    return ProxyResult(metrics, result.model if result.model is not None else student, losses=losses,
                       details=details)
