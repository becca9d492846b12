"""The study folder: where it is, and the name of every file in it (the one place that names them).

A study's folder (default ``./hylo_runs/<name>/``; the root moves with ``$HYLO_RUNS_DIR``, one folder with ``--out``)
holds::

    manifest.json     name, storage URL, fingerprint, objectives, teacher, package version (what later commands read)
    study.yaml        the resolved study (space inlined)
    study.db          the Optuna storage (SQLite, unless --storage named another)
    trials.parquet    one row per trial, rewritten atomically after every finished trial
    library.json      the block library's sensitivity table (``hylo-search library``)
    audit.json        the fidelity audit (``hylo-search audit``)
    .driver.lock      held (flock) by the running driver
    cache/            built-in teachers, converted layers (cache/layers), the block library (cache/library)
    exports/          layout files written by ``hylo-search export``

Every file here is written through :func:`atomic_write_text` / :func:`atomic_path` (:mod:`hylo_model.atomic`).
"""

from __future__ import annotations

import os
from pathlib import Path

from hylo_model.atomic import atomic_path, atomic_write_bytes, atomic_write_text

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]

ENV_ROOT = "HYLO_RUNS_DIR"
DEFAULT_ROOT = "hylo_runs"

MANIFEST = "manifest.json"
STUDY_YAML = "study.yaml"
STORAGE_FILE = "study.db"
TRIALS_TABLE = "trials.parquet"
LIBRARY_TABLE = "library.json"
AUDIT = "audit.json"
DRIVER_LOCK = ".driver.lock"
CACHE = "cache"
CONVERTED_LAYERS = "cache/layers"
LIBRARY_CACHE = "cache/library"
EXPORTS = "exports"


def output_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or DEFAULT_ROOT)


def study_dir(name: str, out: str | os.PathLike | None = None) -> Path:
    return Path(out) if out else output_root() / name


def default_storage_url(folder: Path) -> str:
    return f"sqlite:///{(folder / STORAGE_FILE).resolve()}"


def export_path(folder: Path, trial: int) -> Path:
    return folder / EXPORTS / f"trial_{trial:05d}.yaml"
