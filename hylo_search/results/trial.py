"""One trial of a study: ``show`` (the layout drawn per layer, objectives, constraints, probes, timings) and
``export`` (its layout as a file ``promote`` / ``train`` / ``upcycle`` read). Nothing here imports torch."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial, TrialState

from .. import paths
from ..define.layout_files import write_layout
from ..errors import UsageError
from ..search.storage import StudyFolder, open_study_folder
from ..search.trials import INTERRUPTED_ATTR, status_of
from .front import format_value


def get_trial(handle: StudyFolder, number: int) -> FrozenTrial:
    trials = handle.study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise UsageError(f"study {handle.manifest.name!r} has no trial {number}; trials: 0..{len(trials) - 1}")
    return trials[number]


def export_layout(study: StudyFolder | str, trial: int, out: str | os.PathLike | None = None) -> Path:
    """Write trial ``trial``'s layout as a file ``hylo-search promote`` / ``train`` / ``upcycle`` read, with the
    teacher, the upcycle options and the trial's scores. ``study`` is a name, a study folder or a StudyFolder.

    For ``promote``'s gate the file also carries the study's ``probes`` (kind, tasks, lengths, scorer), its
    ``promotion`` settings (recipe, gate, gate_seed, gate_samples) and the trial's ``promise``: per probe metric
    (``probe_*``, at each length), ``{mean, se, n, seeds}`` (see :func:`promise_of`)."""
    handle = open_study_folder(study) if isinstance(study, str) else study
    t = get_trial(handle, trial)
    if t.state != TrialState.COMPLETE:
        reason = t.user_attrs.get("infeasible") or t.user_attrs.get("failure") or t.state.name
        raise UsageError(f"trial {trial} of {handle.manifest.name!r} is {status_of(t)} ({reason}); "
                         "export a completed trial (see `hylo-search pareto`)")
    layout = t.user_attrs["layout"]
    path = Path(out) if out else paths.export_path(handle.folder, trial)
    metadata = {
        "teacher": _teacher_for_export(handle), "upcycle": handle.manifest.upcycle, "study": handle.manifest.name,
        "trial": trial, "objectives": dict(zip(handle.metrics, t.values)),
        "constraints": dict(t.constraints), "baseline": t.user_attrs.get("baseline"),
        "hylo_version": handle.manifest.version,
    }
    resolved = _resolved_study(handle)
    if resolved is not None:
        probes = resolved.get("probes") or {}
        metadata["probes"] = {k: probes.get(k) for k in ("kind", "tasks", "lengths", "scorer")}
        metadata["promotion"] = resolved.get("promotion") or {}
        source, promise = promise_of(handle, t, probes)
        if promise:
            metadata["promise"] = promise
            if source != trial:
                metadata["promise_trial"] = source
    return write_layout(path, layout, **metadata)


# Probe metrics whose values are means of per-sample scores in [0, 1]: a single run's standard error is at most
# the binomial sqrt(p (1 - p) / n), which is what it gets. Other metrics (log-likelihoods, plug-ins') get none.
BOUNDED_PROBE_METRICS = ("probe_accuracy", "probe_partial")


def promise_of(handle: StudyFolder, trial: FrozenTrial, probes: dict[str, Any]
               ) -> tuple[int, dict[str, dict[str, Any]]]:
    """(the trial the promise comes from, ``{metric: {mean, se, n, seeds}}``) for every probe metric of ``trial``.

    A replicated trial (user attr ``replicates``), or the replicated trial of the same layout
    (``replicate_of`` = ``trial``), gives each metric's mean and standard error over its seeds; ``n`` is the probe
    samples behind one seed's value (samples x tasks). A single run gives its value, ``seeds`` [its seed], and for
    :data:`BOUNDED_PROBE_METRICS` the binomial standard error; others ``se: None``."""
    source = trial
    if not trial.user_attrs.get("replicates"):
        for other in handle.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if other.user_attrs.get("replicate_of") == trial.number and other.user_attrs.get("replicates"):
                source = other
                break
    tasks = max(1, len(probes.get("tasks") or []))
    replicates = source.user_attrs.get("replicates") or {}
    promise: dict[str, dict[str, Any]] = {}
    if replicates.get("metrics"):
        n = int(replicates.get("probe_samples") or probes.get("samples") or 0) * tasks
        for name, summary in sorted(replicates["metrics"].items()):
            if name.startswith("probe_"):
                promise[name] = {"mean": float(summary["mean"]), "se": summary.get("se"), "n": n,
                                 "seeds": list(replicates.get("seeds") or [])}
        return source.number, promise
    n = int(probes.get("samples") or 0) * tasks
    seed = (source.user_attrs.get("run") or {}).get("seed")
    for name, value in sorted((source.user_attrs.get("metrics") or {}).items()):
        if not name.startswith("probe_") or value is None:
            continue
        value = float(value)
        bounded = name.partition("@")[0] in BOUNDED_PROBE_METRICS and 0.0 <= value <= 1.0 and n > 0
        promise[name] = {"mean": value, "se": math.sqrt(value * (1 - value) / n) if bounded else None, "n": n,
                         "seeds": [seed] if seed is not None else []}
    return source.number, promise


def _resolved_study(handle: StudyFolder) -> dict[str, Any] | None:
    """The resolved study the folder was run with (study.yaml), or None when it is missing or unreadable."""
    try:
        data = yaml.safe_load((handle.folder / paths.STUDY_YAML).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _teacher_for_export(handle: StudyFolder) -> str:
    """The teacher as the study names it (``builtin:tiny``, a hub id, or a path as given), so that a layout file
    holds nothing of this machine. ``promote`` / ``train`` / ``upcycle`` resolve each: a built-in is the shipped
    folder or built again, identically; a relative path is read from the layout file's folder when it exists
    there, else from the working directory."""
    return handle.manifest.teacher


_COLOURS = {"A": "bold white on red", "L": "black on yellow", "M": "white on blue", "G": "black on green"}


def describe_trial(handle: StudyFolder, number: int) -> list[Any]:
    """Rich renderables for ``show``: the layout drawn per layer, objectives, constraints, probes, timings."""
    from rich.table import Table
    from rich.text import Text

    t = get_trial(handle, number)
    attrs = t.user_attrs
    title = f"trial {t.number} of {handle.manifest.name}: {status_of(t)}"
    if attrs.get("baseline"):
        title += f" (baseline {attrs['baseline']})"
    parts: list[Any] = [Text(title, style="bold")]
    tokens = (attrs.get("layout") or "").split(",") if attrs.get("layout") else []
    if tokens:
        drawing = Text("layers  ")
        for i, token in enumerate(tokens):
            drawing.append(f" {token:<4}", style=_COLOURS.get(token[0], ""))
            drawing.append(" ")
        ruler = "index   " + "".join(f" {i:<4} " for i in range(len(tokens)))
        parts += [Text(f"layout  {attrs['layout']}"), drawing, Text(ruler, style="dim"),
                  Text("        A attention  L<rank> MLA  M Mamba2  G Gated DeltaNet", style="dim")]
    run, result = attrs.get("run", {}), attrs.get("result", {})
    notes = {"tier": attrs.get("tier"), "promoted_from (first-tier trial)": attrs.get("promoted_from"),
             "source": attrs.get("source"), "infeasible": attrs.get("infeasible"), "failure": attrs.get("failure"),
             "duplicate_of": attrs.get("duplicate_of"), "proposed_layout (before repair)": run.get("proposed_layout")}
    for label, value in notes.items():
        if value is not None:
            parts.append(Text(f"{label}: {value}", style="red" if label == "failure" else ""))
    if INTERRUPTED_ATTR in t.system_attrs:
        parts.append(Text(f"interrupted: {t.system_attrs[INTERRUPTED_ATTR]}", style="yellow"))
    scores = Table(title="objectives, metrics and constraints (constraints: <= 0 is feasible)")
    scores.add_column("name")
    scores.add_column("value", justify="right")
    for metric, value in zip(handle.metrics, t.values or []):
        scores.add_row(f"objective {metric}", format_value(value))
    for key, value in sorted((attrs.get("memory") or {}).items()):
        scores.add_row(key, format_value(value))
    for key, value in sorted((attrs.get("metrics") or {}).items()):
        scores.add_row(key, format_value(value))
    for key, value in sorted(t.constraints.items()):
        scores.add_row(f"constraint {key}", format_value(value))
    parts.append(scores)
    tables = {"probes": attrs.get("probe_table"), "per-layer reconstruction": attrs.get("layer_table"),
              "proxy stages (held-out KL before -> after)": (result.get("details") or {}).get("stages")}
    for title_text, rows in tables.items():
        rows = rows or []
        if rows:
            table = Table(title=title_text)
            for column in rows[0]:
                table.add_column(str(column))
            for row in rows:
                table.add_row(*[format_value(row.get(c)) for c in rows[0]])
            parts.append(table)
    if attrs.get("losses"):
        parts.append(Text("losses: " + "; ".join(f"{k}: {', '.join(format_value(x) for x in v)}"
                                                 for k, v in attrs["losses"].items())))
    timings = dict(result.get("timings") or {})
    if t.datetime_complete and t.datetime_start:
        timings["total_s"] = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
    if timings:
        parts.append(Text("timings: " + ", ".join(f"{k} {v}" for k, v in timings.items())))
    where = ", ".join(f"{k} {result[k]}" for k in ("node", "host", "device") if result.get(k))
    if where:
        parts.append(Text(f"ran on: {where}", style="dim"))
    return parts
