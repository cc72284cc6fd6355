"""A throw-away PostgreSQL 15 cluster, for the tests and the benchmark: `initdb` into a
temporary folder as an unprivileged user, `pg_ctl` on a free loopback port, no system
service; stopped and removed after."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import create_engine, text

from dicomcast.sandbox.servers import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "nobody"  # PostgreSQL refuses to run as root


def _as_user(command: list[str]) -> list[str]:
    """The command as the unprivileged user when we are root (CI), else as ourselves."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", USER, "--", *command]


class Cluster:
    """A running test cluster: its URL, and the restart a failover test needs."""

    def __init__(self, folder: Path, user: str, port: int) -> None:
        self.folder = folder
        self.data = folder / "pgdata"
        self.user = user
        self.port = port
        self.url = f"postgresql+psycopg://{user}@127.0.0.1:{port}/postgres"

    def _ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(
            _as_user([str(BIN / "pg_ctl"), "-D", str(self.data), *args]),
            check=check,
            capture_output=True,
        )

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.folder / 'pgsockets'} -c fsync=off"
        )
        self._ctl("-o", options, "-w", "-l", str(self.folder / "pg.log"), "start")

    def stop(self, mode: str = "fast", *, check: bool = True) -> None:
        """`immediate` is what a crash or a failover looks like to the clients."""
        self._ctl("-m", mode, "-w", "stop", check=check)

    def restart(self, mode: str = "immediate") -> None:
        self.stop(mode)
        self.start()

    def database(self, name: str) -> str:
        """A new database in the cluster; returns its URL."""
        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url.rsplit("/", 1)[0] + f"/{name}"


@contextlib.contextmanager
def postgres() -> Iterator[Cluster]:
    """A running cluster (database `postgres`, trust auth). Its folder is a fresh one under
    the system temp folder, where the unprivileged user can reach it (pytest's own temp
    folders are the invoking user's alone)."""
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
    cluster = Cluster(folder, user, free_port())
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop(check=False)
        shutil.rmtree(folder, ignore_errors=True)
