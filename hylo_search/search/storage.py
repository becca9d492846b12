"""A study's Optuna storage, its manifest, its single-driver locks, and opening an existing study folder.

Storages: SQLite (``sqlite:///PATH``, the default, one machine), Optuna's journal file (``journal:PATH``, for a
filesystem that every driver machine shares) and PostgreSQL (``postgresql+psycopg://USER@HOST/DB``, with
``pip install 'hylo-search[postgres]'``); other SQLAlchemy URLs (MySQL) are passed to Optuna as they are.

One driver runs a study at a time, and it holds locks that its death releases, even by kill -9: an flock on the
study folder (``.driver.lock``) and, for a file storage, on ``<file>.driver.lock`` beside the SQLite or journal
file, so two folders pointed at one file cannot both drive it (not ``<file>.lock``: that is the journal's own
write lock). On PostgreSQL the lock is a session-level advisory lock keyed by the study's name, held by a
connection of its own for the driver's lifetime (:class:`AdvisoryLock`). An advisory lock rather than a heartbeat
row: the server drops it the moment the holder's connection closes (a killed process's socket is closed by its
kernel), so a rerun resumes at once instead of waiting out a staleness timeout, and no clock or timeout has to be
trusted; a machine that vanishes without closing its socket is noticed through TCP keepalives (about 2 minutes).
With its lock held a driver is the study's only writer (:func:`single_driver`): any trial still RUNNING belongs
to a dead driver and is failed and retried at once. Other server storages (MySQL) take no study lock: there,
Optuna's heartbeat fails stale trials and :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` retries them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

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
        raise UsageError(f"storage {url!r} is not a database URL; allowed: sqlite:///PATH, "
                         "postgresql+psycopg://USER@HOST/DB, mysql://..., journal:PATH") from None


def is_file_storage(url: str) -> bool:
    return url.startswith(("sqlite:", "journal:"))


def is_postgresql(url: str) -> bool:
    try:
        return not url.startswith("journal:") and make_url(url).get_backend_name() == "postgresql"
    except ArgumentError:
        return False


def single_driver(url: str) -> bool:
    """Whether the driver's storage lock makes it the study's only writer (file storages, PostgreSQL), so a trial
    still RUNNING when it starts belongs to a dead driver."""
    return is_file_storage(url) or is_postgresql(url)


def shown(url: str) -> str:
    """``url`` as messages show it: the password, if the URL holds one, replaced by ``***``."""
    if url.startswith("journal:"):
        return url
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _driver_hint(url: str, error: Exception) -> str:
    if "psycopg" in str(error) and is_postgresql(url):
        return "; install the PostgreSQL driver (pip install 'hylo-search[postgres]') and write the URL as " \
               "postgresql+psycopg://USER@HOST[:PORT]/DB"
    return ""


def make_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 max_retry: int = 3) -> Any:
    """An Optuna storage for ``url``: ``journal:PATH`` (journal file), anything else an RDB URL. Heartbeats are
    turned on only where no study lock makes the driver the only writer (MySQL; see the module docstring)."""
    if url.startswith("journal:"):
        return JournalStorage(JournalFileBackend(url[len("journal:"):]))
    kwargs: dict[str, Any] = {}
    if heartbeat_interval and not single_driver(url):
        kwargs = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry))
    try:
        return RDBStorage(url, **kwargs)
    except (ImportError, ValueError, ArgumentError, optuna.exceptions.StorageInternalError) as error:
        raise UsageError(f"storage {shown(url)!r}: {type(error).__name__}: {error}{_driver_hint(url, error)}") \
            from None


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
        try:
            if (folder / paths.MANIFEST).is_file():
                return folder
        except OSError:  # a name the file system cannot hold (too long): not a folder
            continue
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
    check_storage_url(url)
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


STORAGE_LOCK_SUFFIX = ".driver.lock"


class DriverLock:
    """An exclusive flock on ``<folder>/.driver.lock`` (or another lock file: :meth:`for_storage`); the kernel
    drops it when the holder dies."""

    def __init__(self, folder: Path, path: Path | None = None) -> None:
        self.path = path or folder / paths.DRIVER_LOCK
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)  # the study folder, for its own lock
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
    def for_storage(cls, url: str, study_name: str = "") -> DriverLock | AdvisoryLock | None:
        """The lock of a storage: an flock on ``<file>.driver.lock`` beside a SQLite or journal file, an advisory
        lock on ``study_name`` in a PostgreSQL database, else None (see the module docstring)."""
        file = storage_file(url)
        if file is not None:
            return cls(file.parent, file.with_name(file.name + STORAGE_LOCK_SUFFIX))
        return AdvisoryLock(url, study_name) if is_postgresql(url) else None

    @staticmethod
    def is_held(folder: Path) -> bool:
        """Whether a live driver holds the folder's lock (used by ``list`` to show "running")."""
        return DriverLock.file_is_held(folder / paths.DRIVER_LOCK)

    @staticmethod
    def file_is_held(path: Path) -> bool:
        """Whether a live process holds the flock on the lock file ``path``."""
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


class AdvisoryLock:
    """A PostgreSQL session-level advisory lock on one study, held by a connection of its own (autocommit, so it
    never sits idle in a transaction) from :meth:`acquire` to :meth:`release` or the driver's death.

    The key is 64 bits of SHA-256 of the study name (advisory locks are per database, as study names are). The
    connection names its holder in ``application_name``, which a refused driver reads back from ``pg_locks``.
    Server-side TCP keepalives (probe after 60 s idle, every 10 s, 6 tries) free the lock about two minutes after
    the holder's machine vanishes; over a unix socket they do not apply and are ignored. A session pooler in
    transaction mode (PgBouncer) would break session locks: point the driver at the server itself.
    """

    KEEPALIVES = {"tcp_keepalives_idle": 60, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 6}

    def __init__(self, url: str, study_name: str) -> None:
        self.url = url
        self.study_name = study_name
        self.key = int.from_bytes(hashlib.sha256(f"hylo-search:{study_name}".encode()).digest()[:8], "big",
                                  signed=True)
        self.owner = f"hylo-search driver pid {os.getpid()} on {platform.node()}"[:63]  # NAMEDATALEN - 1
        self._engine: Any = None
        self._connection: Any = None
        self._held = False

    def acquire(self) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        try:
            self._engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                         connect_args={"application_name": self.owner})
            self._connection = self._engine.connect()
            for name, value in self.KEEPALIVES.items():
                self._connection.execute(text(f"SET {name} = {int(value)}"))
            self._held = bool(self._connection.execute(text("SELECT pg_try_advisory_lock(:key)"),
                                                       {"key": self.key}).scalar())
        except (ImportError, DBAPIError) as error:
            self.release()
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UsageError(f"storage {shown(self.url)!r}: cannot take the study lock: {first}"
                             f"{_driver_hint(self.url, error)}") from None
        if not self._held:
            holder = self._holder()
            self.release()
            raise UsageError(f"another driver ({holder}) is running study {self.study_name!r} in "
                             f"{shown(self.url)} (PostgreSQL advisory lock {self.key}); wait for it or use another "
                             "--storage") from None

    def _holder(self) -> str:
        from sqlalchemy import text

        high, low = (self.key >> 32) & 0xFFFFFFFF, self.key & 0xFFFFFFFF
        row = self._connection.execute(text(
            "SELECT a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid::bigint = :high "
            "AND l.objid::bigint = :low AND l.database = (SELECT oid FROM pg_database "
            "WHERE datname = current_database())"), {"high": high, "low": low}).first()
        if row is None:
            return "?"
        return f"{row[0] or 'a client'}{f' from {row[1]}' if row[1] else ''}"

    def release(self) -> None:
        from sqlalchemy import text

        if self._connection is not None:
            if self._held:
                try:
                    self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": self.key})
                except DBAPIError:
                    pass  # the connection is gone, and the server dropped the lock with it
                self._held = False
            self._connection.close()
            self._connection = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
