"""Where a command may write, checked before any work starts: a bad output path is one line (exit 2) and nothing of
the user's is written, moved or removed.

A folder output may be new, an empty folder, or a folder the command recognises as its own (``ours``: a study
folder, a training run); a file output may be new or a file the command wrote before. Writability is tested by
creating and removing one hidden temporary file in the nearest existing folder, which answers truly for root,
read-only mounts and network file systems alike (``os.access`` does not).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import UsageError


def output_folder(out: str | os.PathLike, label: str, ours: Callable[[Path], bool], what: str) -> Path:
    """``out`` as a folder this command may write ``what`` into; ``label`` names it in messages (``--out DIR``).
    A non-empty folder must satisfy ``ours`` (hidden files are not counted as content)."""
    path = Path(out)
    kind = _kind(path, label)
    if kind not in ("missing", "folder"):
        raise UsageError(f"{label}: {path} is a {kind}, not a folder; give a new or empty folder for the {what}")
    if kind == "folder":
        if any(not p.name.startswith(".") for p in path.iterdir()) and not ours(path):
            raise UsageError(f"{label}: {path} exists, is not empty and does not hold a {what}; nothing was "
                             "written: give a new or empty folder")
        _check_writable(path, label)
    else:
        _check_writable(_nearest_folder(path, label), label)
    return path


def output_file(out: str | os.PathLike, label: str, ours: Callable[[Path], bool], what: str) -> Path:
    """``out`` as a file this command may write ``what`` to: new, or an earlier output that ``ours`` recognises."""
    path = Path(out)
    kind = _kind(path, label)
    if kind == "folder":
        raise UsageError(f"{label}: {path} is a folder; give a file name for the {what} (e.g. {path / 'layout.yaml'})")
    if kind != "missing":
        if kind != "file" or not ours(path):
            raise UsageError(f"{label}: {path} exists and is not a {what} written by hylo-search; nothing was "
                             "written: give a new file name")
        _check_writable(path.parent, label)
    else:
        _check_writable(_nearest_folder(path, label), label)
    return path


def storage_location(url: str, label: str) -> None:
    """A file storage (``sqlite:///PATH``, ``journal:PATH``) must be a file, or creatable in a writable folder."""
    from ..search.storage import storage_file

    path = storage_file(url)
    if path is None:
        return
    kind = _kind(path, label)
    if kind not in ("missing", "file"):
        raise UsageError(f"{label}: {path} is a {kind}; the storage is a file (sqlite:///PATH/study.db, "
                         "journal:PATH/journal.log)")
    _check_writable(path.parent if os.path.isdir(path.parent) else _nearest_folder(path, label), label)


def is_study_folder(folder: Path) -> bool:
    """A study folder: it has a manifest, or holds only what a driver writes before its manifest (one killed
    early)."""
    from .. import paths
    from ..search.storage import STORAGE_LOCK_SUFFIX

    names = {paths.MANIFEST, paths.STUDY_YAML, paths.STORAGE_FILE, paths.STORAGE_FILE + STORAGE_LOCK_SUFFIX,
             paths.TRIALS_TABLE, paths.LIBRARY_TABLE, paths.AUDIT, paths.CACHE, paths.EXPORTS, "front.html",
             "front.png"}
    return (folder / paths.MANIFEST).is_file() or all(p.name in names or p.name.startswith(".")
                                                      for p in folder.iterdir())


def _kind(path: Path, label: str) -> str:
    """"missing", "folder", "file" or "special file" (a link counts as what it points to)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except NotADirectoryError:
        return "missing"  # a file above it: _nearest_folder names it
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise UsageError(f"{label}: a name in {str(path)[:60]}... is longer than the file system allows") from None
        raise UsageError(f"{label}: {path}: {error.strerror or error}") from None
    return "folder" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "special file"


def _nearest_folder(path: Path, label: str) -> Path:
    """The closest existing ancestor of a path that does not exist yet; it must be a folder."""
    for parent in path.absolute().parents:
        if os.path.exists(parent):
            if not os.path.isdir(parent):
                raise UsageError(f"{label}: {parent} is a file, so {path} cannot be created; give a path in a folder")
            return parent
    raise UsageError(f"{label}: {path}: no existing folder above it")


def _check_writable(folder: Path, label: str) -> None:
    try:
        fd, name = tempfile.mkstemp(prefix=".hylo-write-check-", dir=folder)
    except OSError as error:
        raise UsageError(f"{label}: cannot write in {folder} ({error.strerror or error}); give a writable "
                         "folder") from None
    os.close(fd)
    os.unlink(name)
