"""The state database itself: engine, schema migrations, and the one place where database
errors become `StateUnavailable`.

Every read and write of the state goes through `Database.read()` or `Database.write()`, one
short transaction each. A failure anywhere in one (connecting, a statement, the commit)
rolls it back and surfaces as `StateUnavailable` (retriable): nothing half-recorded remains,
and no caller ever sees a raw driver error.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Executable,
    create_engine,
    event,
    make_url,
    text,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool, StaticPool

from dicomcast.errors import ConfigError, StateSchemaError, StateUnavailable
from dicomcast.urls import mask_url

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
MIGRATE_LOCK = 0x6463_6D69  # a PostgreSQL advisory lock key of our own ("dcmi")
# The newest migration. A database already there is opened without loading alembic (a
# fifth of start-up); tests/unit/test_state_store.py checks this against the scripts.
SCHEMA_HEAD = "0010"


def pack(body: dict[str, Any]) -> bytes:
    """A JSON object as the state DB keeps it: compact, zlib-compressed."""
    return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 6)


def unpack(blob: bytes) -> dict[str, Any]:
    """The JSON object `pack` made ({} for anything else)."""
    body = json.loads(zlib.decompress(blob))
    return body if isinstance(body, dict) else {}


def make_engine(
    url: str,
    *,
    pooled: bool = True,
    pool_size: int = 5,
    overflow: int | None = None,
    statement_timeout: float = 30.0,
) -> Engine:
    """The engine; `pooled=False` gives one that opens a fresh connection each time (what
    a probe of a SQLite file needs: a pooled connection may answer from its cache).
    `statement_timeout` (seconds, 0 = none) bounds each PostgreSQL statement and how long
    SQLite waits for a locked file."""
    wait_ms = int(statement_timeout * 1000)
    try:
        if url.startswith("sqlite"):
            memory = url in ("sqlite://", "sqlite:///:memory:")
            engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": statement_timeout or 30},
                poolclass=StaticPool if memory else (None if pooled else NullPool),
            )

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                if not memory:
                    cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(
                    "PRAGMA synchronous=NORMAL" if not memory else "PRAGMA synchronous=OFF"
                )
                cursor.execute(f"PRAGMA busy_timeout={wait_ms or 30000}")
                # Each pooled connection keeps its own page cache (2 MB by default); the hot
                # rows are few, and the OS caches the file anyway.
                cursor.execute("PRAGMA cache_size=-256")
                cursor.close()

            return engine
        options = {"options": f"-c statement_timeout={wait_ms}"} if wait_ms else {}
        return create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=pool_size if overflow is None else overflow,
            connect_args=options if url.startswith("postgresql") else {},
        )
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ConfigError(
            f"state database URL {mask_url(url)!r} is not usable: {mask_url(str(exc))}"
        ) from None


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Database failures inside become StateUnavailable naming `what` was being done."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise StateUnavailable(
            f"state database error in {what}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}"
        ) from exc


def changed(session: Session, statement: Executable, params: dict[str, Any] | None = None) -> int:
    """Run an UPDATE/DELETE and say how many rows it touched."""
    result = session.execute(statement, params)
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def _sqlite_file(url: str) -> Path | None:
    """The file of an on-disk SQLite database (None: in memory, or another database)."""
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    return Path(database).resolve() if database and database != ":memory:" else None


class Database:
    """One state database: short transactions, errors translated once, schema migrations,
    and a probe that notices the database being deleted, replaced or corrupted."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        overflow: int | None = None,
        statement_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.engine = make_engine(
            url, pool_size=pool_size, overflow=overflow, statement_timeout=statement_timeout
        )
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.file = _sqlite_file(url)
        self._probe = make_engine(url, pooled=False) if self.file is not None else self.engine
        self.identity: str | None = None  # the `identity` row seen at start-up
        self._file_id: tuple[int, int] | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def insert(self) -> Any:
        """The dialect's INSERT, which knows ON CONFLICT (SQLite and PostgreSQL alike)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert
        from sqlalchemy.dialects import sqlite

        return sqlite.insert

    @contextlib.contextmanager
    def read(self, what: str) -> Iterator[Session]:
        """A session for reads; nothing it does is committed."""
        with translated(what), self._sessions() as session:
            yield session

    @contextlib.contextmanager
    def write(self, what: str) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with translated(what), self._sessions.begin() as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()
        self._probe.dispose()

    def ping(self) -> None:
        """Raise StateUnavailable unless this is still the database the worker started
        with and it answers a query on the tables it uses. A SQLite file that was deleted
        or replaced is noticed (an open connection would go on writing to the deleted
        one); a file restored from a backup is picked up again by reconnecting."""
        try:
            if self.file is not None:
                self._check_file(self.file)
            with translated("ping"), self._probe.connect() as connection:
                found = connection.execute(text("SELECT id FROM identity")).scalar()
                connection.execute(text("SELECT count(*) FROM sources"))
        except StateUnavailable:
            self.engine.dispose()  # the next connection opens whatever is there then
            raise
        if self.identity is not None and found != self.identity:
            self.engine.dispose()
            raise StateUnavailable(
                f"state database {mask_url(self.url)} was replaced by another one; restore "
                "the original, or restart the worker to start from the new one"
            )

    def _check_file(self, path: Path) -> None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise StateUnavailable(f"state database file {path} is missing") from None
        file_id = (stat.st_dev, stat.st_ino)
        if self._file_id is not None and file_id != self._file_id:
            self.engine.dispose()  # a new file at that path: connect to it, then check it
        self._file_id = file_id

    def _alembic(self) -> Config:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    def check_creatable(self) -> None:
        """ConfigError, naming the file, for a SQLite file that does not exist and cannot
        be created (its folder is missing or not writable); nothing is created."""
        if self.file is None or self.file.exists():
            return
        folder = self.file.resolve().parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError(
                f"cannot create the state database {self.file.resolve()}: {folder} is "
                "not a folder this process may write in. Set DICOMCAST_STATE_URL, e.g. "
                "sqlite:////var/lib/dicomcast/state.db"
            )

    def migrate(self) -> bool:
        """Bring the schema to this version's head; refuse a DB written by a newer version.
        Returns True when the database was new (empty)."""
        self.check_creatable()
        if self._at_head():
            return False
        from alembic import command
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        cfg = self._alembic()
        scripts = ScriptDirectory.from_config(cfg)
        heads = set(scripts.get_heads())
        known = {s.revision for s in scripts.walk_revisions()}
        with translated("migrate"), self.engine.begin() as connection:
            if self.dialect == "sqlite":
                # The sqlite3 module opens no transaction before DDL, so each CREATE would
                # commit alone: a crash mid-migration left tables without alembic's version,
                # and no later start got past them. One transaction, which also makes
                # workers starting together on one file take turns.
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            if self.dialect == "postgresql":
                # Workers starting together take turns: the first migrates, the others
                # then find the schema at head (the lock ends with this transaction).
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATE_LOCK}
                )
            current = set(MigrationContext.configure(connection).get_current_heads())
            unknown = current - known
            if unknown:
                raise StateSchemaError(
                    f"state database {mask_url(self.url)} has schema {sorted(unknown)}, newer "
                    f"than this dicomcast knows ({sorted(heads)}); upgrade dicomcast"
                )
            if current != heads:
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
            self._opened(connection)
        return not current

    def _at_head(self) -> bool:
        """The schema is this version's (read straight from alembic's table); the identity
        and file checks `migrate` makes are made here too."""
        with translated("migrate"), self.engine.connect() as connection:
            try:
                found = connection.execute(text("SELECT version_num FROM alembic_version")).all()
            except SQLAlchemyError:
                return False  # no table yet: a new database
            if [tuple(row) for row in found] != [(SCHEMA_HEAD,)]:
                return False
            self._opened(connection)
        return True

    def _opened(self, connection: Connection) -> None:
        """Remember which database this is (its `identity` row, and its file), for `ping`
        to notice it being replaced."""
        self.identity = connection.execute(text("SELECT id FROM identity")).scalar()
        if self.file is not None:
            stat = self.file.stat()
            self._file_id = (stat.st_dev, stat.st_ino)

    def schema_revision(self) -> set[str]:
        from alembic.runtime.migration import MigrationContext

        with translated("schema_revision"), self.engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads())
