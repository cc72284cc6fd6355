"""The state database itself: engine, schema migrations, and the one place where database
errors become `StateUnavailable`.

Every read and write of the state goes through `Database.read()` or `Database.write()`, one
short transaction each. A failure anywhere in one (connecting, a statement, the commit)
rolls it back and surfaces as `StateUnavailable` (retriable): nothing half-recorded remains,
and no caller ever sees a raw driver error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import CursorResult, Engine, Executable, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from dicomcast.errors import ConfigError, StateSchemaError, StateUnavailable
from dicomcast.urls import mask_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def make_engine(url: str) -> Engine:
    try:
        if url.startswith("sqlite"):
            memory = url in ("sqlite://", "sqlite:///:memory:")
            engine = create_engine(
                url,
                connect_args={"check_same_thread": False, "timeout": 30},
                poolclass=StaticPool if memory else None,
            )

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                if not memory:
                    cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(
                    "PRAGMA synchronous=NORMAL" if not memory else "PRAGMA synchronous=OFF"
                )
                cursor.execute("PRAGMA busy_timeout=30000")
                # Each pooled connection keeps its own page cache (2 MB by default); the hot
                # rows are few, and the OS caches the file anyway.
                cursor.execute("PRAGMA cache_size=-256")
                cursor.close()

            return engine
        return create_engine(url, pool_pre_ping=True)
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


def changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE/DELETE and say how many rows it touched."""
    result = session.execute(statement)
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


class Database:
    """One state database: short transactions, errors translated once, schema migrations."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def insert(self) -> Any:
        """The dialect's INSERT, which knows ON CONFLICT (SQLite and PostgreSQL alike)."""
        return postgresql.insert if self.dialect == "postgresql" else sqlite.insert

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

    def ping(self) -> None:
        """Raise StateUnavailable unless the database answers a trivial query."""
        with translated("ping"), self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def _alembic(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    def migrate(self) -> None:
        """Bring the schema to this version's head; refuse a DB written by a newer version."""
        cfg = self._alembic()
        scripts = ScriptDirectory.from_config(cfg)
        heads = set(scripts.get_heads())
        known = {s.revision for s in scripts.walk_revisions()}
        with translated("migrate"), self.engine.begin() as connection:
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

    def schema_revision(self) -> set[str]:
        with translated("schema_revision"), self.engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads())
