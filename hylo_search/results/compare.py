"""Two runs of one study compared: do independent seeds reach the same answer?

``hylo-search compare FOLDER_A FOLDER_B`` (two study folders, e.g. ``hylo-search study tiny --seed 0`` and
``--seed 1000``) reports, per objective, the Spearman correlation of the replicated means over the layouts both runs
replicated (with the audit's bootstrap 95 % interval, :func:`~.audit.correlations`), and the Jaccard index of the two
Pareto fronts' layout sets (the front ``hylo-search pareto`` shows, :func:`~.front.front_report`, over the
replicated trials). Beside it, the Jaccard index of the *firm* fronts: the members that no other trial could dominate
within noise (those ``pareto`` does not mark ``~``), which separates a front that moves between seeds from one whose
borderline members flip.
"""

from __future__ import annotations

from typing import Any

from optuna.trial import TrialState

from ..errors import UsageError
from ..search.replicates import TIER
from ..search.storage import StudyFolder
from .audit import correlations
from .front import front_report


def replicated_means(handle: StudyFolder) -> dict[str, list[float]]:
    """layout -> objective values (means over seeds) of each completed replicated trial."""
    return {t.user_attrs["layout"]: list(t.values) for t in handle.study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE and t.user_attrs.get("tier") == TIER}


def compare_runs(a: StudyFolder, b: StudyFolder) -> dict[str, Any]:
    """Spearman per objective over the common replicated layouts, and the fronts' layout sets and Jaccard index."""
    if a.metrics != b.metrics:
        raise UsageError(f"the runs have other objectives: {', '.join(a.metrics)} vs {', '.join(b.metrics)}")
    means_a, means_b = replicated_means(a), replicated_means(b)
    common = sorted(set(means_a) & set(means_b))
    if not common:
        raise UsageError("the runs have no replicated layout in common (replicates.seeds > 1 in both?)")
    spearman = {metric: correlations([means_a[c][i] for c in common], [means_b[c][i] for c in common])
                for i, metric in enumerate(a.metrics)}
    # One front report per run (the front ``pareto`` shows, each member with the trials that could dominate it
    # within noise): the fronts, and their firm members.
    reports = [front_report(h)["front"] for h in (a, b)]
    fronts = [{row["layout"] for row in rows} for rows in reports]
    firm = [{row["layout"] for row in rows if not row["within_noise"]} for rows in reports]
    return {
        "runs": [str(a.folder), str(b.folder)], "replicated": [len(means_a), len(means_b)],
        "common_layouts": common, "spearman": spearman,
        "fronts": [sorted(f) for f in fronts], "jaccard": _jaccard(*fronts),
        "firm_fronts": [sorted(f) for f in firm], "firm_jaccard": _jaccard(*firm),
    }


def _jaccard(a: set[str], b: set[str]) -> float | None:
    return len(a & b) / len(a | b) if a | b else None


def format_comparison(result: dict[str, Any]) -> str:
    lines = [f"runs: {result['runs'][0]} vs {result['runs'][1]}",
             f"replicated layouts: {result['replicated'][0]} and {result['replicated'][1]}, "
             f"{len(result['common_layouts'])} in common"]
    for metric, stats in result["spearman"].items():
        if stats["spearman"] is None:
            lines.append(f"  Spearman of mean {metric}: undefined ({stats['undefined']})")
            continue
        ci = stats["spearman_ci"]
        interval = f" (bootstrap 95 % interval {ci[0]:.3f} to {ci[1]:.3f})" if ci else ""
        lines.append(f"  Spearman of mean {metric}: {stats['spearman']:.3f}{interval}")
    fronts = [set(f) for f in result["fronts"]]
    lines.append(f"fronts: {len(fronts[0])} and {len(fronts[1])} layouts, {len(fronts[0] & fronts[1])} of "
                 f"{len(fronts[0] | fronts[1])} shared: Jaccard {result['jaccard']:.3f}")
    only = [sorted(fronts[k] - fronts[1 - k]) for k in (0, 1)]
    lines.append(f"  only in the first: {', '.join(only[0]) or '-'}; only in the second: {', '.join(only[1]) or '-'}")
    firm = result["firm_jaccard"]
    lines.append(f"firm fronts (members no trial could dominate within noise): {len(result['firm_fronts'][0])} and "
                 f"{len(result['firm_fronts'][1])} layouts, Jaccard {'undefined' if firm is None else f'{firm:.3f}'}")
    return "\n".join(lines)
