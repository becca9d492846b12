"""A study's Optuna storage, its manifest, its single-driver locks, and opening an existing study folder.

Only the driver writes to the storage, so SQLite is safe by default. A driver holds an flock (released by the
kernel when the process dies, even by kill -9) on the study folder (``.driver.lock``) and, for a file storage, on
the storage file itself (``<file>.lock``), so two folders pointed at one SQLite or journal file cannot both drive
it. With the locks held and a file storage, any trial still RUNNING belongs to a dead driver and is failed and
retried at once. Server storages (PostgreSQL, MySQL) may be shared by several drivers: there, Optuna's heartbeat
fails stale trials and :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` retries them.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .. import paths
from ..errors import UsageError


def check_storage_url(url: str) -> None:
    """Reject a storage URL that cannot work before anything is written (no connection is made)."""
    if url.startswith("journal:"):
        if not url[len("journal:"):]:
            raise UsageError("--storage journal:PATH needs a path")
        return
    try:
        make_url(url).get_dialect()  # knows the scheme without importing its driver or connecting
    except ArgumentError:
        raise UsageError(f"storage {url!r} is not a database URL; allowed: sqlite:///PATH, postgresql://..., "
                         "mysql://..., journal:PATH") from None


def is_file_storage(url: str) -> bool:
    return url.startswith(("sqlite:", "journal:"))


def make_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int = 3) -> Any:
    """An Optuna storage for ``url``: ``journal:PATH`` (journal file), anything else an RDB URL. Heartbeats are
    turned on for server URLs only (see the module docstring)."""
    if url.startswith("journal:"):
        return JournalStorage(JournalFileBackend(url[len("journal:"):]))
    kwargs: dict[str, Any] = {}
    if heartbeat_interval and not is_file_storage(url):
        kwargs = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry))
    try:
        return RDBStorage(url, **kwargs)
    except (ImportError, ValueError, optuna.exceptions.StorageInternalError) as error:
        raise UsageError(f"storage {url!r}: {type(error).__name__}: {error}") from None


@dataclass
class Manifest:
    name: str
    storage: str
    fingerprint: str
    objectives: list[dict[str, str]]
    teacher: str
    upcycle: dict[str, Any]
    version: str

    def write(self, folder: Path) -> None:
        paths.atomic_write_text(folder / paths.MANIFEST, json.dumps(self.__dict__, indent=2) + "\n")

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        try:
            return cls(**json.loads((folder / paths.MANIFEST).read_text()))
        except (OSError, ValueError, TypeError) as error:
            raise UsageError(f"{folder}: not a study folder ({paths.MANIFEST}: {error})") from None


def find_study_folder(name_or_dir: str) -> Path:
    """A study folder from a study name (under the output root) or a folder path."""
    root = paths.output_root()
    for folder in (Path(name_or_dir), root / name_or_dir):
        if (folder / paths.MANIFEST).is_file():
            return folder
    known = ", ".join(p.parent.name for p in sorted(root.glob(f"*/{paths.MANIFEST}"))) or "none"
    raise UsageError(f"no study {name_or_dir!r} under {root}/ (nor a study folder at that path); found: {known}")


@dataclass
class StudyFolder:
    """An existing study folder opened for reports: its manifest and the Optuna study (``storage``: the URL it was
    opened from)."""

    folder: Path
    manifest: Manifest
    study: Any
    storage: str = ""

    @property
    def directions(self) -> list[str]:
        return [o["direction"] for o in self.manifest.objectives]

    @property
    def metrics(self) -> list[str]:
        return [o["metric"] for o in self.manifest.objectives]


def open_study_folder(name_or_dir: str, storage: str | None = None) -> StudyFolder:
    """Open a study folder (a name under the output root, or a path) and the storage its manifest names."""
    folder = find_study_folder(name_or_dir)
    manifest = Manifest.read(folder)
    url = storage or manifest.storage
    try:
        study = optuna.load_study(study_name=manifest.name, storage=make_storage(url))
    except KeyError:
        raise UsageError(f"storage {url!r} has no study named {manifest.name!r}") from None
    return StudyFolder(folder, manifest, study, url)


def storage_file(url: str) -> Path | None:
    """The local file behind a file storage URL (``sqlite:///PATH``, ``journal:PATH``), else None."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if url.startswith("journal:"):
        return Path(url[len("journal:"):])
    return None


class DriverLock:
    """An exclusive flock on ``<folder>/.driver.lock`` (or another lock file: :meth:`for_storage`); the kernel
    drops it when the holder dies."""

    def __init__(self, folder: Path, path: Path | None = None) -> None:
        self.path = path or folder / paths.DRIVER_LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            self._fd = None
            raise UsageError(f"another driver (pid {owner}) is running this study (lock {self.path}); "
                             "wait for it or use another --out / --storage") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @classmethod
    def for_storage(cls, url: str) -> DriverLock | None:
        """The lock of a file storage (``<file>.lock`` beside the SQLite or journal file), else None."""
        file = storage_file(url)
        return cls(file.parent, file.with_name(file.name + ".lock")) if file is not None else None

    @staticmethod
    def is_held(folder: Path) -> bool:
        """Whether a live driver holds the folder's lock (used by ``list`` to show "running")."""
        path = folder / paths.DRIVER_LOCK
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False
