"""Atomic file writes, the one helper every writer in both packages uses.

A reader (or a process killed mid-write) sees either the old file or the new one, never half of one: the data goes
to a temporary file in the target's folder (same filesystem), is flushed to disk, and replaces the target with one
``os.replace``. A write that fails leaves the old file as it was and removes its temporary file.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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
