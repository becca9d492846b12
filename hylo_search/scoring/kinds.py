"""Which proxy and probe kinds exist, and how a study's ``proxy.kind`` / ``probes.kind`` resolves to one.

==============  ========================================================================  =======================
kind            what it is                                                                metrics
==============  ========================================================================  =======================
``recipe``      a training recipe (align -> distill), in-process (:mod:`hylo_model.train`)  proxy_kl, proxy_loss
``upcycle_kl``  the upcycled student, untrained, scored exactly on held-out sequences      proxy_kl, proxy_loss,
                (KL to the teacher, cross-entropy) + per-layer reconstruction              recon_error
``assembled``   the layout built from the block library (no training; optional short       proxy_kl, proxy_loss
                distill), scored on the held-out sequences: the cheap first tier
``ruler``       RULER-style probes (:mod:`hylo_search.probes`)                             probe_accuracy[@N]
``agreement``   top-1 agreement with the teacher on the last quarter of held-out           probe_accuracy[@N]
                sequences of each probe length
``none``        no probes                                                                  -
==============  ========================================================================  =======================

``auto`` picks ``recipe`` when a recipe is named (else ``upcycle_kl``), and ``ruler`` when probe tasks are named
(else ``agreement``; ``none`` without lengths); the choice is part of the study's fingerprint. Anything else of the
form ``package.module:Class`` is a plug-in (:mod:`.api`); a study file that names one runs its code, so study files
are trusted like code, and the module's path is printed when it loads.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from hylo_model.train import load_recipe

from ..define.schema import MEMORY_METRICS, ProbeConfig, ProxyConfig
from ..errors import UsageError
from ..probes import SCORERS, parse_tasks
from .probe_kinds import Agreement, NoProbes, RulerProbes
from .proxy_kinds import AssembledProxy, RecipeProxy, UpcycleKL

PROXIES: dict[str, type] = {"recipe": RecipeProxy, "upcycle_kl": UpcycleKL, "assembled": AssembledProxy}
PROBES: dict[str, type] = {"ruler": RulerProbes, "agreement": Agreement, "none": NoProbes}
_ANNOUNCED: set[str] = set()


def _plugin(kind: str, source: Any) -> type:
    module_name, _, attr = kind.partition(":")
    try:
        module = importlib.import_module(module_name)
        found = getattr(module, attr)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"{source}: plug-in {kind!r} cannot be imported ({type(error).__name__}: {error})") from None
    if kind not in _ANNOUNCED:
        _ANNOUNCED.add(kind)
        print(f"hylo-search: plug-in {kind} loaded from {getattr(module, '__file__', None) or module_name}",
              file=sys.stderr)
    return found


def recipe_problem(config: ProxyConfig) -> str | None:
    """Why ``config.recipe`` cannot run here (recipe not found or invalid), or None."""
    try:
        load_recipe(config.recipe)
    except ValueError as error:
        return str(error)
    return None


def resolve_proxy_kind(config: ProxyConfig, source: Any = "", field: str = "proxy") -> tuple[str, str | None]:
    """(the proxy kind to use, a problem that stops trials from running or None); ``field`` names the config in
    messages (``proxy``, or ``tiers.first`` for a first tier).

    ``auto`` takes the recipe when one is named, else ``upcycle_kl``. A recipe that cannot run (not shipped,
    invalid) is not a validation error of the study — the study is well formed and the recipe belongs to the
    training code — but stops ``study`` before any trial, with the reason."""
    kind = config.kind
    if kind in ("auto", "recipe") and not config.recipe:
        if kind == "recipe":
            raise UsageError(f"{source}: field '{field}.recipe': kind 'recipe' needs a recipe name")
        return "upcycle_kl", None
    if kind == "auto":
        kind = "recipe"
    if kind not in PROXIES and ":" not in kind:
        raise UsageError(f"{source}: field '{field}.kind': unknown proxy {kind!r}; allowed: auto, "
                         f"{', '.join(PROXIES)}, or package.module:Class")
    if ":" in kind:
        _plugin(kind, f"{source}: field '{field}.kind'")
    problem = recipe_problem(config) if kind == "recipe" or (kind == "assembled" and config.recipe) else None
    return kind, (f"{source}: field '{field}.recipe': {problem}" if problem else None)


def resolve_probe_kind(config: ProbeConfig, source: Any = "") -> tuple[str, str | None]:
    """(the probes kind to use, a problem that stops trials from running or None); ``auto`` takes the RULER-style
    probes when tasks are named, else ``agreement``."""
    kind = config.kind
    if kind == "auto":
        kind = "none" if not config.lengths else "ruler" if config.tasks else "agreement"
    if kind not in PROBES and ":" not in kind:
        raise UsageError(f"{source}: field 'probes.kind': unknown probes {kind!r}; allowed: auto, "
                         f"{', '.join(PROBES)}, or package.module:Class")
    if ":" in kind:
        _plugin(kind, f"{source}: field 'probes.kind'")
    elif kind != "none" and not config.lengths:
        raise UsageError(f"{source}: field 'probes.lengths': probes {kind!r} need at least one length")
    if kind == "ruler":
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


def available_metrics(loaded: Any) -> list[str]:
    """Every metric name an objective of ``loaded`` (a LoadedStudy) may use (``*`` stands for a length); with two tiers, the
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
