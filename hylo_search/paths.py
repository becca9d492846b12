"""The study folder: where it is, and the name of every file in it (the one place that names them).

A study's folder (default ``./hylo_runs/<name>/``; the root moves with ``$HYLO_RUNS_DIR``, one folder with ``--out``)
holds::

    manifest.json     name, storage URL, fingerprint, objectives, teacher, package version (what later commands read)
    study.yaml        the resolved study (space inlined)
    study.db          the Optuna storage (SQLite, unless --storage named another)
    trials.parquet    one row per trial, rewritten atomically after every finished trial
    library.json      the block library's sensitivity table (``hylo-search library``)
    audit.json        the fidelity audit (``hylo-search audit``)
    .driver.lock      held (flock) by the running driver; a file storage also gets <file>.driver.lock beside it
    cache/            built-in teachers, converted layers (cache/layers), the block library (cache/library)
    exports/          layout files written by ``hylo-search export``

Every file here is written through :func:`atomic_write_text` / :func:`atomic_path`, hylo_search's one atomic-write
helper (the same contract as :mod:`hylo_model.atomic`, which the model package's writers use; this one imports
neither torch nor transformers, so ``pareto``, ``show``, ``list`` and ``export`` answer quickly).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


@contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on a clean exit it replaces ``path`` in one step.

    The temporary name starts with ``.<name>.`` and ends with ``.tmp`` (the suffix of ``path`` kept before it, so
    writers that pick a format by extension, such as matplotlib, still do)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode & ~_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current
