"""A throwaway PostgreSQL server for tests: ``initdb`` + ``pg_ctl`` in a private temporary folder, listening only on
a unix socket in that folder (no TCP port, so nothing else on the machine can reach it, and no port can collide).
``initdb`` refuses to run as root: when the tests run as root, the server runs as the ``postgres`` user that
Debian's package creates (or ``hylo-pg``, created with ``useradd`` if neither exists), through ``runuser``.

The server binaries come from ``PATH`` or Debian's ``/usr/lib/postgresql/<version>/bin``; CI installs the
``postgresql`` package (``.ci/run``). Durability is off (fsync, synchronous commit): the data is thrown away.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SUPERUSER = "hylo"  # the database role initdb creates (trust auth on the private socket)


def server_binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                                                   key=lambda p: int(p.split("/")[4]), reverse=True)), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL server program {name!r} not found on PATH nor in /usr/lib/postgresql/*/bin; "
                           "install it (Debian: apt-get install -y postgresql)")
    return found


def _unprivileged_user() -> str:
    for name in ("postgres", "hylo-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "hylo-pg"],
                   check=True, capture_output=True)
    return "hylo-pg"


@dataclass
class Server:
    folder: Path  # holds the data directory, the log and the socket

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.folder}"

    def create_database(self, name: str) -> str:
        """A new, empty database; its URL."""
        import psycopg

        with psycopg.connect(host=str(self.folder), user=SUPERUSER, dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextmanager
def postgres_server() -> Iterator[Server]:
    """Start a server, yield it, and stop it (immediate shutdown) and delete its folder, whatever happens."""
    initdb, pg_ctl = server_binary("initdb"), server_binary("pg_ctl")
    # Short, under /tmp: the socket path must stay under ~107 characters, and pytest's tmp_path is private to root.
    folder = Path(tempfile.mkdtemp(prefix="hylo-pg-", dir="/tmp"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = _unprivileged_user()
        shutil.chown(folder, user)  # mkdtemp made it 0700: the server's user alone (and root) can reach the socket
        as_user = ["runuser", "-u", user, "--"]
    data, log = folder / "data", folder / "server.log"
    options = (f"-c listen_addresses='' -c unix_socket_directories='{folder}' -c fsync=off "
               "-c synchronous_commit=off -c full_page_writes=off -c max_connections=40")
    started = False
    try:
        try:
            subprocess.run([*as_user, initdb, "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--no-sync",
                            "--encoding=UTF8", "--locale=C"], check=True, capture_output=True, timeout=120)
            started = True
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60",
                            "start"], check=True, capture_output=True, timeout=90)
        except subprocess.CalledProcessError as error:
            tail = log.read_text()[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{error.cmd[len(as_user)]} failed: {error.stderr.decode(errors='replace')}{tail}") \
                from None
        yield Server(folder)
    finally:
        if started:
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
