"""The fidelity audit: do the study's cheap objectives rank layouts the way a longer proxy does?

``hylo-search audit STUDY --layouts K --budget-multiplier M`` takes K distinct feasible layouts — the study's
completed trials first, spread evenly over their ranking (best, worst and between), then feasible layouts drawn
from the space — and scores each with every cheap objective the study has: each tier's proxy (and the study's
probes), reusing a trial's numbers where one exists, and the additive sensitivity score of the block library
(summed block KL; the teacher's probe score minus the summed probe drops) when the study folder holds a library
table. Each layout is then trained by the longer proxy: the study's recipe (a recipe proxy's, else the library's)
with its tokens x M. For every (cheap objective, metric) pair, Spearman's rho and Kendall's tau
(:mod:`scipy.stats`) between the cheap values and the longer proxy's values of that metric. The result is written
atomically to ``<study folder>/audit.json``; ``pareto`` and ``study`` warn about an objective whose Spearman
correlation is below :data:`~.front.AUDIT_THRESHOLD`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hylo_model.train import RecipeError, load_recipe

from .. import paths
from ..console import render_text
from ..define.schema import MEMORY_METRICS
from ..errors import UsageError
from ..executors import run_all
from ..library.build import build_library
from ..library.sensitivity import read_table
from ..search.sampler import repair
from ..search.storage import Manifest, open_study_folder
from ..search.trials import ranked_trials
from ..study import LoadedStudy
from ..worker.tasks import TrialTask
from .front import AUDIT_THRESHOLD, audit_warnings_of

ADDITIVE = "additive"  # the sensitivity table's sum, a cheap objective that needs no run at all


def audit_metrics(loaded: LoadedStudy) -> list[str]:
    """The objectives a cheap tier estimates (exact memory metrics need no audit)."""
    return [m for m in loaded.metrics if m.split("@")[0] not in MEMORY_METRICS]


def cheap_tiers(loaded: LoadedStudy) -> list[tuple[str, dict[str, Any] | None]]:
    """(tier name, proxy config override or None for the study's proxy), cheapest first."""
    tiers: list[tuple[str, dict[str, Any] | None]] = []
    if loaded.first_kind is not None:
        tiers.append((loaded.first_kind, loaded.resolved()["tiers"]["first"]))
    return tiers + [(loaded.proxy_kind, None)]


def long_proxy(loaded: LoadedStudy, multiplier: float) -> dict[str, Any]:
    """The longer proxy: the recipe proxy's recipe (else the library's) with its token budget x ``multiplier``."""
    if multiplier <= 0:
        raise UsageError(f"--budget-multiplier must be > 0, got {multiplier}")
    proxy = loaded.definition.proxy
    name, tokens = (proxy.recipe, proxy.tokens) if loaded.proxy_kind == "recipe" else \
        (loaded.definition.library_recipe(), None)
    if not name:
        raise UsageError(f"{loaded.source}: field 'proxy.recipe': the audit retrains layouts with a recipe; name one "
                         "in 'proxy.recipe' or 'library.recipe'")
    try:
        base = tokens or load_recipe(name).total_tokens()
    except RecipeError as error:
        raise UsageError(str(error)) from None
    return {"kind": "recipe", "recipe": name, "tokens": max(1, int(round(base * multiplier))),
            "options": dict(proxy.options) if loaded.proxy_kind == "recipe" else {}}


def choose_layouts(loaded: LoadedStudy, trials: list[Any], count: int, seed: int) -> list[list[str]]:
    """``count`` distinct feasible layouts: completed trials spread over their ranking, then drawn from the space."""
    space = loaded.space
    # First-tier trials only: a promoted trial's numbers come from another tier and do not rank with them.
    done = [t for t in trials if t.state.name == "COMPLETE" and all(v <= 0 for v in t.constraints.values())
            and "promoted_from" not in t.user_attrs]
    ranked = list({t.user_attrs["layout"]: None for t in ranked_trials(done, loaded.directions)})
    if len(ranked) > count:
        ranked = [ranked[int(k)] for k in np.round(np.linspace(0, len(ranked) - 1, count))]
    layouts = [code.split(",") for code in ranked]
    rng = np.random.default_rng(seed)
    for _ in range(200 * count):
        if len(layouts) >= count or space.is_ablation:
            break
        tokens = repair(space, space.sample(rng), rng)
        if space.is_feasible(tokens) and tokens not in layouts:
            layouts.append(tokens)
    if len(layouts) < 3:
        raise UsageError(f"the audit needs at least 3 distinct feasible layouts; the study and its space give "
                         f"{len(layouts)}")
    return layouts[:count]


def library_rows(folder: Path) -> dict[tuple[int, str], dict[str, Any]] | None:
    """The library table's rows by ``(layer, token)``, or None before the library exists."""
    if not (folder / paths.LIBRARY_TABLE).is_file():
        return None
    return {(r["layer"], r["token"]): r for r in read_table(folder)["rows"]}


def additive_estimates(rows: dict[tuple[int, str], dict[str, Any]] | None, tokens: list[str],
                       metrics: list[str]) -> dict[str, float] | None:
    """The library table's sum for a layout (``rows`` from :func:`library_rows`): ``proxy_kl`` = summed block KL;
    ``probe_accuracy@L`` (and ``probe_accuracy`` when asked) = the teacher's probe score minus the summed probe drops
    at the table's length."""
    if rows is None:
        return None
    picked = [rows.get((i, t)) for i, t in enumerate(tokens) if t != "A"]
    if any(r is None for r in picked):
        return None
    values = {"proxy_kl": sum(r["kl"] for r in picked)}
    drops = [r.get("probe_drop") for r in picked]
    length = next((r["probe_length"] for r in rows.values() if r.get("probe_length")), None)
    teacher = next((r["teacher_probe"] for r in rows.values() if r.get("teacher_probe") is not None), None)
    if length and teacher is not None and all(d is not None for d in drops):
        estimate = teacher - sum(drops)
        values[f"probe_accuracy@{length}"] = estimate
        if "probe_accuracy" in metrics:
            values["probe_accuracy"] = estimate
    return {m: v for m, v in values.items() if m in metrics}


def correlations(cheap: list[float], long: list[float]) -> dict[str, Any]:
    from scipy.stats import kendalltau, spearmanr

    pairs = [(a, b) for a, b in zip(cheap, long)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    out: dict[str, Any] = {"n": len(pairs), "spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None}
    if len(pairs) >= 3 and len({a for a, _ in pairs}) > 1 and len({b for _, b in pairs}) > 1:
        x, y = zip(*pairs)
        rho, rho_p = spearmanr(x, y)
        tau, tau_p = kendalltau(x, y)
        out.update(spearman=float(rho), spearman_p=float(rho_p), kendall=float(tau), kendall_p=float(tau_p))
    return out


def run_audit(loaded: LoadedStudy, folder: Path, executor: Any, layouts: int, multiplier: float,
              storage: str | None = None, threads: int | None = None,
              report: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Score ``layouts`` layouts with every cheap objective and the longer proxy; return and save the audit."""
    report = report or (lambda event, info: None)
    if layouts < 3:
        raise UsageError(f"--layouts must be >= 3 (a rank correlation needs at least 3 layouts), got {layouts}")
    metrics = audit_metrics(loaded)
    if not metrics:
        raise UsageError(f"{loaded.source}: field 'objectives': every objective is an exact memory metric; "
                         "there is no cheap objective to audit")
    long = long_proxy(loaded, multiplier)
    tiers = cheap_tiers(loaded)
    trials = []
    if (folder / paths.MANIFEST).is_file():
        known_print = Manifest.read(folder).fingerprint
        if known_print != loaded.fingerprint():
            raise UsageError(f"study folder {folder} was created from a different definition (fingerprint "
                             f"{known_print} != {loaded.fingerprint()}); use another --out")
        trials = open_study_folder(str(folder), storage).study.get_trials(deepcopy=False)
    chosen = choose_layouts(loaded, trials, layouts, loaded.definition.seed)
    if loaded.uses_library():
        summary = build_library(loaded, folder, executor, threads, report)
        if summary.failures:
            raise RuntimeError(f"the block library is incomplete: {'; '.join(summary.failures)}")
    known: dict[tuple[str, str], dict[str, float]] = {}
    for t in trials:  # a trial's numbers stand for its tier (the earliest completed trial per layout)
        tier = t.user_attrs.get("tier") or loaded.proxy_kind
        if t.state.name == "COMPLETE" and t.user_attrs.get("metrics"):
            known.setdefault((tier, t.user_attrs["layout"]), t.user_attrs["metrics"])
    jobs: list[tuple[int, str, dict[str, Any] | None]] = []
    for index, tokens in enumerate(chosen):
        for tier, config in tiers:
            if (tier, ",".join(tokens)) not in known:
                jobs.append((index, tier, config))
        jobs.append((index, "long", long))
    report("audit_started", {"layouts": len(chosen), "runs": len(jobs), "long": long})
    resolved, study_dir = loaded.resolved(), str(folder.resolve())
    records: dict[tuple[int, str], dict[str, Any]] = {}
    work = [TrialTask(resolved, study_dir, number, chosen[index], loaded.definition.seed, threads=threads,
                      proxy=config) for number, (index, _, config) in enumerate(jobs)]
    for number, record in run_all(executor, work):
        index, tier, _ = jobs[number]
        records[(index, tier)] = record
        report("audit_run", {"layout": ",".join(chosen[index]), "tier": tier, "record": record})
    rows, table = [], library_rows(folder)
    for index, tokens in enumerate(chosen):
        code = ",".join(tokens)
        row: dict[str, Any] = {"layout": code, "cheap": {}, "long": None, "failures": {}}
        for tier, _ in tiers:
            record = records.get((index, tier))
            if record is None:
                row["cheap"][tier] = known[(tier, code)]
            elif record.get("status") == "ok":
                row["cheap"][tier] = record["metrics"]
            else:
                row["failures"][tier] = record.get("failure")
        additive = additive_estimates(table, tokens, metrics)
        if additive:
            row["cheap"][ADDITIVE] = additive
        record = records[(index, "long")]
        if record.get("status") == "ok":
            row["long"] = record["metrics"]
        else:
            row["failures"]["long"] = record.get("failure")
        rows.append(row)
    found = []
    for tier in [t for t, _ in tiers] + [ADDITIVE]:
        for metric in metrics:
            cheap = [(r["cheap"].get(tier) or {}).get(metric) for r in rows]
            if all(v is None for v in cheap):
                continue
            long_values = [(r["long"] or {}).get(metric) for r in rows]
            found.append({"objective": f"{tier}:{metric}", "tier": tier, "metric": metric,
                          **correlations(cheap, long_values)})
    result = {"study": loaded.name, "fingerprint": loaded.fingerprint(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "budget_multiplier": multiplier, "long_proxy": long, "threshold": AUDIT_THRESHOLD, "layouts": rows,
              "correlations": found}
    paths.atomic_write_text(folder / paths.AUDIT, json.dumps(result, indent=1) + "\n")
    return result


def format_audit(result: dict[str, Any]) -> str:
    """The correlations as a table, and the warnings."""
    from rich.table import Table

    long = result["long_proxy"]
    table = Table(title=f"fidelity audit of {result['study']}: cheap objectives vs {long['recipe']} at "
                        f"{long['tokens']:,} tokens ({result['budget_multiplier']:g}x), {len(result['layouts'])} "
                        "layouts")
    for column in ("objective", "layouts", "Spearman", "p", "Kendall", "p "):
        table.add_column(column, justify="left" if column == "objective" else "right")
    for row in result["correlations"]:
        cells = [_number(row[k]) for k in ("spearman", "spearman_p", "kendall", "kendall_p")]
        table.add_row(row["objective"], str(row["n"]), *cells)
    parts: list[Any] = [table]
    parts += [f"failed: {r['layout']} ({k}): {v}" for r in result["layouts"] for k, v in r["failures"].items()]
    parts += [f"warning: {warning}" for warning in audit_warnings_of(result)]
    return render_text(*parts)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"
