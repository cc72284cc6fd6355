"""A real PostgreSQL 15 cluster of the tests' own: `initdb` into a temporary folder as an
unprivileged user, `pg_ctl` on a free loopback port, no system service; stopped after."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dicomcast.sandbox.servers import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "nobody"  # PostgreSQL refuses to run as root


def _as_user(command: list[str]) -> list[str]:
    """The command as the unprivileged user when we are root (CI), else as ourselves."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", USER, "--", *command]


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A running cluster; yields its SQLAlchemy URL (database `postgres`, trust auth). Its
    folder is a fresh one under the system temp folder, where the unprivileged user can
    reach it (pytest's own temp folders are the invoking user's alone)."""
    if not (BIN / "initdb").exists():
        raise RuntimeError("PostgreSQL 15 is missing (scripts/setup --for-tests installs it)")
    folder = Path(tempfile.mkdtemp(prefix="dicomcast-pg-"))
    data, sockets = folder / "pgdata", folder / "pgsockets"
    sockets.mkdir()
    user = USER if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        entry = pwd.getpwnam(USER)
        for path in (folder, sockets):
            shutil.chown(path, entry.pw_uid, entry.pw_gid)
    subprocess.run(
        _as_user([str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", user, "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    port = free_port()
    options = (
        f"-c listen_addresses=127.0.0.1 -c port={port} "
        f"-c unix_socket_directories={sockets} -c fsync=off"
    )
    subprocess.run(
        _as_user(
            [
                str(BIN / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-w",
                "-l",
                str(folder / "pg.log"),
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://{user}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_user([str(BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)
