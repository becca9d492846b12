"""The fidelity audit: do the study's cheap scores predict what promotion delivers?

``hylo-search audit STUDY --layouts K`` takes K distinct feasible layouts other than the teacher — the study's
completed first-tier trials first, spread evenly over their ranking (best, worst and between), then feasible
layouts drawn from the space — and scores each with every cheap objective the study has: each tier's proxy (and
the study's probes), reusing a trial's numbers where one exists, and the additive sensitivity score of the block
library when the study folder holds a library table. Each layout is then *promoted*: trained by the study's
promotion recipe (``promotion.recipe``, or ``--recipe``; ``--budget-multiplier`` scales its tokens) and judged on
text and probe prompts the search never saw — a seed the search never used (:data:`AUDIT_SEED_OFFSET`) draws the
recipe's held-out split, its data order and the probe prompts, with ``promotion.gate_samples`` probe samples.

For every (cheap objective, metric) pair it reports Spearman's rho and Kendall's tau with percentile bootstrap 95 %
confidence intervals (layouts resampled with replacement) and the top-k regret: how much worse, on the promoted
metric, the best of the cheap score's top k is than the best audited layout. A correlation is *undefined* when
either side has fewer than :data:`MIN_DISTINCT` distinct values (ties carry no ranking). The result is written
atomically to ``<study folder>/audit.json``; ``pareto`` and ``study`` warn about an objective whose Spearman lower
confidence bound is below :data:`~.front.AUDIT_THRESHOLD`, or whose correlation is undefined.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from scipy.stats import kendalltau, spearmanr

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
from ..worker.tasks import Failure, TrialTask
from .front import AUDIT_THRESHOLD, audit_warnings_of

ADDITIVE = "additive"  # the sensitivity table's sum, a cheap objective that needs no run at all
AUDIT_SEED_OFFSET = 7919  # the audit's seed = study seed + this: data order, held-out split, probes the search never used
MIN_DISTINCT = 3  # a rank correlation needs this many distinct values on each side
BOOTSTRAP = 2000
TOP_K = (1, 3)


def audit_metrics(loaded: LoadedStudy) -> list[str]:
    """The objectives a cheap tier estimates (exact memory metrics need no audit)."""
    return [m for m in loaded.metrics if m.split("@")[0] not in MEMORY_METRICS]


def cheap_tiers(loaded: LoadedStudy) -> list[tuple[str, dict[str, Any] | None]]:
    """(tier name, proxy config override or None for the study's proxy), cheapest first."""
    tiers: list[tuple[str, dict[str, Any] | None]] = []
    if loaded.first_kind is not None:
        tiers.append((loaded.first_kind, loaded.resolved()["tiers"]["first"]))
    return tiers + [(loaded.proxy_kind, None)]


def promotion_proxy(loaded: LoadedStudy, recipe: str | None = None, multiplier: float | None = None) -> dict[str, Any]:
    """The promotion run as a proxy config: ``recipe`` (else the study's ``promotion.recipe``) at its own token
    budget, or that budget x ``multiplier``."""
    name = recipe or loaded.definition.promotion.recipe
    if not name:
        raise UsageError(f"{loaded.source}: field 'promotion.recipe': the audit trains layouts as promotion does; "
                         "name the promotion recipe there or pass --recipe")
    if multiplier is not None and not multiplier > 0:
        raise UsageError(f"--budget-multiplier must be > 0, got {multiplier}")
    try:
        tokens = load_recipe(name).total_tokens()
    except RecipeError as error:
        raise UsageError(str(error)) from None
    if multiplier is not None:
        tokens = max(1, int(round(tokens * multiplier)))
    return {"kind": "recipe", "recipe": name, "tokens": tokens, "options": {"data": None}}  # the recipe's own data


def choose_layouts(loaded: LoadedStudy, trials: list[Any], count: int, seed: int) -> list[list[str]]:
    """``count`` distinct feasible layouts other than the teacher: completed first-tier trials spread over their
    ranking, then layouts drawn from the space."""
    space = loaded.space
    teacher = ",".join(space.teacher_tokens)
    # First-tier trials only: promoted and replicated trials' numbers come from another tier.
    done = [t for t in trials if t.state.name == "COMPLETE" and all(v <= 0 for v in t.constraints.values())
            and "promoted_from" not in t.user_attrs and "replicate_of" not in t.user_attrs
            and t.user_attrs.get("layout") != teacher]
    ranked = list({t.user_attrs["layout"]: None for t in ranked_trials(done, loaded.directions)})
    if len(ranked) > count:
        ranked = [ranked[int(k)] for k in np.round(np.linspace(0, len(ranked) - 1, count))]
    layouts = [code.split(",") for code in ranked]
    rng = np.random.default_rng(seed)
    for _ in range(200 * count):
        if len(layouts) >= count or space.is_ablation:
            break
        tokens = repair(space, space.sample(rng), rng)
        if space.is_feasible(tokens) and tokens not in layouts and ",".join(tokens) != teacher:
            layouts.append(tokens)
    if len(layouts) < MIN_DISTINCT:
        raise UsageError(f"the audit needs at least {MIN_DISTINCT} distinct feasible layouts other than the teacher; "
                         f"the study and its space give {len(layouts)}")
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


def _rank_correlations(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    rho = spearmanr(x, y).statistic
    tau = kendalltau(x, y).statistic
    return float(rho), float(tau)


def correlations(cheap: list[float | None], long: list[float | None], seed: int = 0,
                 bootstrap: int = BOOTSTRAP) -> dict[str, Any]:
    """Spearman and Kendall between paired values (pairs with a missing or non-finite side dropped), with
    percentile bootstrap 95 % intervals; every statistic None (undefined) when either side has fewer than
    :data:`MIN_DISTINCT` distinct values. Resamples whose ties leave a side constant are not counted (their number
    is reported)."""
    pairs = [(a, b) for a, b in zip(cheap, long)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    out: dict[str, Any] = {"n": len(pairs), "spearman": None, "spearman_ci": None, "spearman_p": None,
                           "kendall": None, "kendall_ci": None, "kendall_p": None, "distinct": None,
                           "undefined": None}
    x, y = (np.array(v, dtype=float) for v in zip(*pairs)) if pairs else (np.zeros(0), np.zeros(0))
    distinct = (len(np.unique(x)), len(np.unique(y)))
    out["distinct"] = list(distinct)
    if min(distinct) < MIN_DISTINCT:
        out["undefined"] = (f"ties: {distinct[0]} distinct cheap and {distinct[1]} distinct promoted values on "
                            f"{len(pairs)} layouts (a ranking needs {MIN_DISTINCT} on each side)")
        return out
    rho, tau = spearmanr(x, y), kendalltau(x, y)
    out.update(spearman=float(rho.statistic), kendall=float(tau.statistic), spearman_p=float(rho.pvalue),
               kendall_p=float(tau.pvalue))
    rng = np.random.default_rng(seed)
    rhos, taus, skipped = [], [], 0
    for _ in range(bootstrap):
        pick = rng.integers(len(x), size=len(x))
        if len(np.unique(x[pick])) < 2 or len(np.unique(y[pick])) < 2:
            skipped += 1
            continue
        r, t = _rank_correlations(x[pick], y[pick])
        rhos.append(r)
        taus.append(t)
    if rhos:
        out["spearman_ci"] = [float(np.percentile(rhos, 2.5)), float(np.percentile(rhos, 97.5))]
        out["kendall_ci"] = [float(np.percentile(taus, 2.5)), float(np.percentile(taus, 97.5))]
    out["bootstrap"] = {"resamples": bootstrap, "skipped_constant": skipped}
    return out


def top_k_regret(cheap: list[float | None], long: list[float | None], direction: str,
                 ks: tuple[int, ...] = TOP_K) -> dict[str, float | None]:
    """For each k: the promoted value of the best audited layout minus the best promoted value among the cheap
    score's top k (both in the metric's better direction, so 0 is no regret)."""
    pairs = [(a, b) for a, b in zip(cheap, long)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    sign = 1.0 if direction == "maximize" else -1.0
    if not pairs:
        return {str(k): None for k in ks}
    best = max(sign * b for _, b in pairs)
    order = sorted(pairs, key=lambda p: -sign * p[0])  # best cheap score first
    return {str(k): best - max(sign * b for _, b in order[:k]) for k in ks}


def run_audit(loaded: LoadedStudy, folder: Path, executor: Any, layouts: int, recipe: str | None = None,
              multiplier: float | None = None, storage: str | None = None, threads: int | None = None,
              report: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Score ``layouts`` layouts with every cheap objective and promote each; return and save the audit."""
    report = report or (lambda event, info: None)
    if layouts < MIN_DISTINCT:
        raise UsageError(f"--layouts must be >= {MIN_DISTINCT} (a rank correlation needs at least "
                         f"{MIN_DISTINCT} layouts), got {layouts}")
    metrics = audit_metrics(loaded)
    if not metrics:
        raise UsageError(f"{loaded.source}: field 'objectives': every objective is an exact memory metric; "
                         "there is no cheap objective to audit")
    promoted = promotion_proxy(loaded, recipe, multiplier)
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
    for t in trials:  # a trial's numbers stand for its tier (the earliest completed first-tier trial per layout)
        tier = t.user_attrs.get("tier") or loaded.proxy_kind
        if t.state.name == "COMPLETE" and t.user_attrs.get("metrics") and "replicate_of" not in t.user_attrs:
            known.setdefault((tier, t.user_attrs["layout"]), t.user_attrs["metrics"])
    seed = loaded.definition.seed
    audit_seed = seed + AUDIT_SEED_OFFSET
    fresh_probes = {"samples": loaded.definition.promotion.gate_samples}
    jobs: list[tuple[int, str, dict[str, Any] | None]] = []
    for index, tokens in enumerate(chosen):
        for tier, config in tiers:
            if (tier, ",".join(tokens)) not in known:
                jobs.append((index, tier, config))
        jobs.append((index, "promoted", promoted))
    report("audit_started", {"layouts": len(chosen), "runs": len(jobs), "promoted": promoted, "seed": audit_seed})
    resolved, study_dir = loaded.resolved(), str(folder.resolve())
    work = [TrialTask(resolved, study_dir, number, chosen[index], audit_seed if tier == "promoted" else seed,
                      threads=threads, proxy=config, probes=fresh_probes if tier == "promoted" else None)
            for number, (index, tier, config) in enumerate(jobs)]
    records: dict[tuple[int, str], dict[str, Any]] = {}
    for number, record in run_all(executor, work):
        index, tier, _ = jobs[number]
        records[(index, tier)] = record
        report("audit_run", {"layout": ",".join(chosen[index]), "tier": tier, "record": record})
    rows, table = [], library_rows(folder)
    for index, tokens in enumerate(chosen):
        code = ",".join(tokens)
        row: dict[str, Any] = {"layout": code, "cheap": {}, "promoted": None, "failures": {}}
        for tier, _ in tiers:
            record = records.get((index, tier))
            failure = Failure.of(record) if record is not None else None
            if record is None:
                row["cheap"][tier] = known[(tier, code)]
            elif failure is None:
                row["cheap"][tier] = record["metrics"]
            else:
                row["failures"][tier] = failure.text
        additive = additive_estimates(table, tokens, metrics)
        if additive:
            row["cheap"][ADDITIVE] = additive
        failure = Failure.of(records[(index, "promoted")])
        if failure is None:
            row["promoted"] = records[(index, "promoted")]["metrics"]
        else:
            row["failures"]["promoted"] = failure.text
        rows.append(row)
    directions = dict(zip(loaded.metrics, loaded.directions))
    found = []
    for tier in [t for t, _ in tiers] + [ADDITIVE]:
        for metric in metrics:
            cheap = [(r["cheap"].get(tier) or {}).get(metric) for r in rows]
            if all(v is None for v in cheap):
                continue
            promoted_values = [(r["promoted"] or {}).get(metric) for r in rows]
            found.append({"objective": f"{tier}:{metric}", "tier": tier, "metric": metric,
                          **correlations(cheap, promoted_values, seed),
                          "regret": top_k_regret(cheap, promoted_values, directions[metric])})
    result = {"study": loaded.name, "fingerprint": loaded.fingerprint(), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "promoted_with": promoted, "audit_seed": audit_seed, "probe_samples": fresh_probes["samples"],
              "threshold": AUDIT_THRESHOLD, "layouts": rows, "correlations": found}
    paths.atomic_write_text(folder / paths.AUDIT, json.dumps(result, indent=1) + "\n")
    return result


def format_audit(result: dict[str, Any]) -> str:
    """The correlations with their intervals and the regret as a table, then failures and warnings."""
    from rich.table import Table

    promoted = result["promoted_with"]
    table = Table(title=f"fidelity audit of {result['study']}: cheap scores vs promotion ({promoted['recipe']} at "
                        f"{promoted['tokens']:,} tokens, seed {result['audit_seed']}), {len(result['layouts'])} "
                        "layouts, 95 % bootstrap intervals")
    for column in ("objective", "layouts", "Spearman [95% CI]", "Kendall [95% CI]",
                   *[f"regret@{k}" for k in TOP_K]):
        table.add_column(column, justify="left" if column == "objective" else "right")
    for row in result["correlations"]:
        if row.get("undefined"):
            cells = ["undefined", "undefined"]
        else:
            cells = [f"{row[k]:.2f} [{_interval(row[f'{k}_ci'])}]" for k in ("spearman", "kendall")]
        regret = row.get("regret") or {}
        table.add_row(row["objective"], str(row["n"]), *cells, *[_number(regret.get(str(k))) for k in TOP_K])
    parts: list[Any] = [table]
    parts += [f"undefined: {row['objective']}: {row['undefined']}" for row in result["correlations"]
              if row.get("undefined")]
    parts += [f"failed: {r['layout']} ({k}): {v}" for r in result["layouts"] for k, v in r["failures"].items()]
    parts += [f"warning: {warning}" for warning in audit_warnings_of(result)]
    return render_text(*parts)


def _interval(ci: list[float] | None) -> str:
    return "-" if ci is None else f"{ci[0]:.2f}, {ci[1]:.2f}"


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"
