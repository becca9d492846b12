"""Probe files: samples as JSONL in RULER's field layout, results as JSON + Parquet. Every write is atomic (a
temporary file in the target folder, then ``os.replace``), so a reader never sees half a file."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..paths import atomic_path
from .generate import Sample

if TYPE_CHECKING:
    from .runner import ProbeResults


def write_jsonl(samples: Iterable[Sample], path: str | os.PathLike) -> Path:
    """One JSON object per line: RULER's ``index``/``input``/``outputs``/``length``/``answer_prefix``/
    ``token_position_answer`` plus ``task``, ``max_length``, ``max_new_tokens``, ``seed``, ``depths``."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for sample in samples:
                f.write(json.dumps(sample.to_json(), ensure_ascii=False) + "\n")
    return Path(path)


def read_jsonl(path: str | os.PathLike, task: str | None = None) -> list[Sample]:
    """Samples from our JSONL or RULER's. RULER's records carry no task name: it comes from ``task``, else from
    the folder (RULER writes ``<task>/validation.jsonl``), else from the file name (``<task>.jsonl``)."""
    file = Path(path)
    if task is None:
        from .tasks import TASKS

        task = next((name for name in (file.parent.name, file.stem, file.stem.rsplit("_", 1)[0]) if name in TASKS),
                    None)
    samples = []
    with open(file, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    samples.append(Sample.from_json(json.loads(line), task))
                except (ValueError, KeyError) as error:
                    raise ValueError(f"{file}:{number}: {error}") from None
    return samples


def write_samples(samples: Iterable[Sample], folder: str | os.PathLike) -> list[Path]:
    """``folder/<task>/<length>.jsonl`` per (task, length) present in ``samples``."""
    groups: dict[tuple[str, int], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.task, s.max_length), []).append(s)
    return [write_jsonl(group, Path(folder) / task / f"{length}.jsonl") for (task, length), group in groups.items()]


def read_samples(folder: str | os.PathLike) -> list[Sample]:
    """Every ``*.jsonl`` under ``folder`` (as :func:`write_samples` lays them out, or RULER's folders)."""
    files = sorted(Path(folder).rglob("*.jsonl"))
    if not files:
        raise ValueError(f"no .jsonl files under {folder}")
    return [s for file in files for s in read_jsonl(file)]


def save_results(results: ProbeResults, folder: str | os.PathLike, name: str | None = None) -> tuple[Path, Path]:
    """``folder/<name>.json`` (settings, task × length summaries, records) and ``folder/<name>.parquet`` (one row
    per sample). ``name`` defaults to ``probe_<scorer>``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = name or f"probe_{results.scorer}"
    json_path, parquet_path = Path(folder) / f"{name}.json", Path(folder) / f"{name}.parquet"
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(results.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    table = pa.Table.from_pylist([{**r, "scorer": results.scorer} for r in results.records])
    with atomic_path(parquet_path) as tmp:
        pq.write_table(table, tmp)
    return json_path, parquet_path


def load_results(path: str | os.PathLike) -> ProbeResults:
    """A :class:`ProbeResults` back from the JSON that :func:`save_results` wrote."""
    from .runner import ProbeResults

    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return ProbeResults(data["records"], data["scorer"], data.get("config", {}))
