"""``study --dry-run``: what a study would do, computed without running or writing anything."""

from __future__ import annotations

from typing import Any

from hylo_model.train import load_recipe

from .. import paths
from ..errors import UsageError
from ..library.sensitivity import read_table
from ..library.solver import library_entries
from ..search.storage import open_study_folder
from ..space.baselines import baselines, measured_baselines
from ..space.cost import memory_metrics
from ..study import LoadedStudy


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.4g} {unit}"
        n /= 1024
    return f"{n:.4g} TiB"


def trial_flops(loaded: LoadedStudy) -> tuple[float, str]:
    """A per-trial compute estimate from the standard rules (forward 2·N·tokens, training 6·N·tokens): the proxy's
    training tokens (recipe) plus teacher and student forwards over the held-out and probe prompts."""
    definition = loaded.definition
    params = memory_metrics(loaded, loaded.space.teacher_tokens)["params"]
    eval_tokens = sum(definition.probes.samples * n for n in definition.probes.lengths) * max(
        1, len(definition.probes.tasks))
    if loaded.proxy_kind != "recipe":  # upcycle_kl and assembled score the held-out set; a recipe evaluates on its own split
        eval_tokens += definition.data.heldout_sequences * definition.data.heldout_length
    train_tokens = 0
    if loaded.proxy_kind == "recipe":
        train_tokens = definition.proxy.tokens or _recipe_tokens(definition.proxy.recipe)
    flops = 6 * params * train_tokens + 2 * 2 * params * eval_tokens
    how = (f"6·N·{train_tokens:,} training tokens + 2·2·N·{eval_tokens:,} evaluation tokens (teacher and student), "
           f"N = {params / 1e9:.3g}B; attention's quadratic term not included")
    return flops, how


def _recipe_tokens(name: str) -> int:
    """Tokens the named recipe trains on (0 when the training code cannot load it here)."""
    try:
        return int(load_recipe(name).total_tokens())
    except (ImportError, ValueError, AttributeError, TypeError):
        return 0


def dry_run_report(loaded: LoadedStudy, options: Any) -> str:
    definition, space = loaded.definition, loaded.space
    lines = [f"study {loaded.name} ({loaded.source})", f"  teacher {definition.teacher}: "
             f"{space.num_layers} layers; space {loaded.space_source}"]
    if space.is_ablation:
        factors = space.space.ablation.factors()
        lines.append(f"  ablation grid: {' x '.join(f'{k} {v}' for k, v in factors.items())}")
    else:
        fixed = [f"{i}={c[0]}" for i, c in enumerate(space.choices) if len(c) == 1]
        lines.append(f"  per-layer choices: {len(space.free_layers)} free layers"
                     + (f"; fixed {', '.join(fixed)}" if fixed else ""))
    size = space.size()
    fraction, how = space.feasible_fraction()
    lines.append(f"  space size: {size:,} layouts ({size:.3e}); feasible fraction {fraction:.4g} ({how})")
    teacher = memory_metrics(loaded, space.teacher_tokens)
    lines.append(f"  teacher cache at {definition.target_length:,} tokens: {_bytes(teacher['cache_bytes'])}; "
                 f"parameters {teacher['params'] / 1e6:,.2f}M")
    for budget in space.space.budgets:
        limit = space.budget_limit(budget)
        value = space.costs.metric(budget.key, space.teacher_tokens)
        shown = _bytes if budget.metric == "cache_bytes" else (lambda n: f"{n / 1e6:,.2f}M")
        lines.append(f"  budget {budget.describe()}: limit {shown(limit)}; the teacher has {shown(value)} "
                     f"({value / limit:.3g}x the limit)")
    for rule in space.space.counts:
        lines.append(f"  count rule: {rule.label} in {rule.min}..{rule.max if rule.max is not None else 'any'}")
    lines.append("  objectives: " + ", ".join(f"{o.metric} ({o.direction})" for o in definition.objectives))
    lines.append(f"  proxy: {loaded.proxy_kind}   probes: {loaded.probe_kind}   sampler: {definition.sampler.name}"
                 f"{' + repair' if definition.sampler.repair and definition.sampler.name not in ('grid', 'brute_force') else ''}")
    data = definition.data
    lines.append(f"  data: {data.source}, seed {definition.data_seed}"
                 f"{' (pinned: the same for every --seed)' if data.seed is not None else ' (the study seed)'}")
    if definition.tiers is not None:
        lines.append(f"  two tiers: every layout scored by {loaded.first_kind} first ({options.trials} trials), "
                     f"then the {definition.tiers.promote} best trained by {loaded.proxy_kind}")
    replicates = definition.replicates
    if replicates.seeds > 1:
        lengths = replicates.probe_lengths or definition.probes.lengths
        lines.append(f"  replicates: the front and every baseline rescored with {replicates.seeds} seeds "
                     f"({replicates.probe_samples} probe samples per task and length"
                     f"{', at ' + ', '.join(f'{n:,}' for n in sorted(lengths)) + ' tokens' if lengths else ''})"
                     f"{', then every layout within noise of the front (race)' if replicates.race else ''}; "
                     "objectives then shown as mean ± standard error")
    if loaded.uses_library():
        config = definition.library_config()
        pool = f"; exact solver pool of {config.pool} (distance >= {config.pool_distance})" if config.pool else ""
        lines.append(f"  block library: {len(library_entries(space))} blocks, align stage of "
                     f"{definition.library_recipe()}{f' at {config.tokens:,} tokens' if config.tokens else ''} "
                     f"(built before the first trial; `hylo-search library` builds it ahead){pool}")
    found = baselines(space)
    infeasible = sum(not space.is_feasible(list(b.tokens)) for b in found)
    lines.append(f"  baselines enqueued first ({len(found)}, {infeasible} infeasible; a constraint's value is its "
                 "excess over the limit, relative for budgets, in layers for counts):")
    for baseline in found:
        tokens = list(baseline.tokens)
        memory = memory_metrics(loaded, tokens)
        violated = [f"{k} {v:+.3g}" for k, v in space.constraints(tokens).items() if v > 0]
        verdict = "feasible" if not violated else f"infeasible: {'; '.join(violated)} (recorded, never trained)"
        lines.append(f"    {baseline.name:<28} {baseline.code}  cache {memory['cache_ratio']:.3g}x  "
                     f"params {memory['params_ratio']:.3g}x  {verdict}")
    if loaded.uses_library():
        lines += _measured_lines(loaded, options)
    flops, how = trial_flops(loaded)
    lines.append(f"  per-trial cost estimate: {flops:.3g} FLOP ({how})")
    measured = _measured_durations(options)
    if measured:
        lines.append(f"  measured so far: {measured}")
    lines.append(f"  would run {options.trials} trials with the {options.executor} executor; "
                 f"folder {options.folder}; storage {options.storage}")
    lines += [f"  warning: {problem} (trials cannot run until this is fixed)" for problem in loaded.problems]
    lines.append("  dry run: nothing was run or written")
    return "\n".join(lines)


def _measured_lines(loaded: LoadedStudy, options: Any) -> list[str]:
    """The baselines placed by the library's measured scores, when this study's library table exists."""
    try:
        table = read_table(options.folder) if (options.folder / paths.LIBRARY_TABLE).is_file() else None
    except UsageError:  # an unreadable table is rebuilt by the study; a dry run reports what it can
        table = None
    if table is None or table.get("fingerprint") != loaded.fingerprint() or "restore" not in table:
        return ["  baselines from measured scores (kl_guided_*, smart_sensitivity_*): enqueued after the block "
                "library is built"]
    space = loaded.space
    found = measured_baselines(space, table)
    known = {b.code: b.name for b in baselines(space)}
    lines = [f"  baselines from the library's measured scores, enqueued after it ({len(found)}):"]
    for baseline in found:
        tokens = list(baseline.tokens)
        memory = memory_metrics(loaded, tokens)
        violated = [f"{k} {v:+.3g}" for k, v in space.constraints(tokens).items() if v > 0]
        verdict = "feasible" if not violated else f"infeasible: {'; '.join(violated)} (recorded, never trained)"
        same = f"; same layout as {known[baseline.code]}, enqueued once" if baseline.code in known else ""
        known.setdefault(baseline.code, baseline.name)
        lines.append(f"    {baseline.name:<28} {baseline.code}  cache {memory['cache_ratio']:.3g}x  "
                     f"params {memory['params_ratio']:.3g}x  {verdict}; {baseline.note}{same}")
    return lines


def _measured_durations(options: Any) -> str | None:
    """Mean duration of completed trials when the study already exists (read only; creates nothing)."""
    if not (options.folder / paths.MANIFEST).is_file():
        return None
    try:
        handle = open_study_folder(str(options.folder), options.storage)
    except Exception:  # noqa: BLE001 — a dry run reports what it can
        return None
    times = [(t.datetime_complete - t.datetime_start).total_seconds()
             for t in handle.study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"
             and t.datetime_complete and t.datetime_start]
    if not times:
        return None
    return f"{len(times)} completed trials, mean {sum(times) / len(times):.3g} s per trial"
