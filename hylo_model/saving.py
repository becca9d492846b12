"""Saved model folders: written whole or not at all, marked as ours, loadable by stock tools, never over user data.

Every folder this package saves (an upcycled student, a training run's ``final/`` and its checkpoints) is built in a
hidden sibling, finished by :func:`finish_folder` and renamed into place by :func:`install_folder`:

- a marker file (:data:`MARKER`, ``{"kind": ...}``) says which kind of output the folder is. An existing folder is
  replaced only when it carries the marker of the same kind and the caller passed ``overwrite=True``; anything else
  that exists and is not an empty folder (a file, a link, a folder with the user's files) is refused, and nothing of
  the user's is moved, renamed or deleted;
- ``configuration_hylo.py`` / ``modeling_hylo.py`` and an ``auto_map`` in ``config.json`` (see
  :mod:`hylo_model.remote_code`) let ``trust_remote_code=True`` load the folder without ``import hylo_model``;
- folders get ``0o777`` and files ``0o666`` less the umask (755/644 under the usual umask 022), as ``mkdir`` and
  ``open`` would give: ``mkdtemp`` alone would leave the folder 700.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import remote_code

MARKER = "hylo_output.json"
KINDS = {"upcycled": "upcycled model", "final": "trained model", "checkpoint": "training checkpoint"}


class OutputPathError(ValueError):
    """The output path cannot take the new folder: it holds something this package may not replace (user data, or
    a previous output without ``overwrite``), or its parent cannot be written."""


def saved_kind(folder: str | os.PathLike) -> str | None:
    """The kind in ``folder``'s marker file, or None when it has none (or is not a folder)."""
    try:
        data = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data.get("kind") if isinstance(data, dict) else None


def check_output(out: str | os.PathLike, kind: str, overwrite: bool = False) -> None:
    """Raise :class:`OutputPathError` unless ``out`` may receive a new ``kind`` output: it does not exist, is an
    empty folder, or (with ``overwrite``) holds a previous output of the same kind. Writes nothing."""
    path = Path(out)
    what = KINDS[kind]
    if path.is_symlink():
        raise OutputPathError(f"{path}: is a symbolic link; give a new or empty folder for the {what}")
    if not path.exists():
        if path.parent.exists() and not path.parent.is_dir():
            raise OutputPathError(f"{path.parent}: is a file, not a folder; give a new or empty folder")
        return
    if not path.is_dir():
        raise OutputPathError(f"{path}: is a file, not a folder; give a new or empty folder for the {what}")
    if not any(path.iterdir()):
        return
    if saved_kind(path) != kind:
        raise OutputPathError(
            f"{path}: exists, is not empty and does not hold a previous {what} (no {MARKER}); nothing was written: "
            "give a new or empty folder"
        )
    if not overwrite:
        raise OutputPathError(f"{path}: holds a previous {what}; pass --overwrite (overwrite=True) to replace it")


def finish_folder(folder: str | os.PathLike, kind: str) -> None:
    """Complete a freshly written folder: marker, remote-code files with ``auto_map``, permissions, fsync."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        if config.get("model_type") == "hylo":
            config["auto_map"] = dict(remote_code.AUTO_MAP)
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
            for name in remote_code.FILES:
                shutil.copyfile(remote_code.FOLDER / name, folder / name)
    (folder / MARKER).write_text(json.dumps({"kind": kind}) + "\n")
    umask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def install_folder(tmp: str | os.PathLike, out: str | os.PathLike, kind: str, overwrite: bool = False) -> Path:
    """Move the finished folder ``tmp`` to ``out`` (same filesystem), after :func:`check_output`. A previous output
    of the same kind is renamed aside and removed only once the new one is in place."""
    tmp, out = Path(tmp), Path(out)
    check_output(out, kind, overwrite)
    old = None
    if out.is_dir() and any(out.iterdir()):
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(out, old)
    try:
        # rename(2) replaces only an empty folder: files that appeared in ``out`` since the check make it fail.
        os.replace(tmp, out)
    except OSError as error:
        if old is not None:
            os.rename(old, out)
        raise OutputPathError(f"{out}: changed while the {KINDS[kind]} was being saved ({error.strerror}); "
                                "nothing was replaced") from None
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old)
    return out


@contextmanager
def new_folder(out: str | os.PathLike, kind: str, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``out`` to write into; on a clean exit it is finished and installed as
    ``out``, on an error it is removed. ``out`` is checked before anything is written."""
    out = Path(out)
    check_output(out, kind, overwrite)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    except OSError as error:
        raise OutputPathError(f"{out}: cannot write there ({error.strerror}); give a writable folder") from None
    try:
        yield tmp
        finish_folder(tmp, kind)
        install_folder(tmp, out, kind, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["KINDS", "MARKER", "OutputPathError", "check_output", "finish_folder", "install_folder", "new_folder",
           "saved_kind"]
