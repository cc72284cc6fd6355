"""The state database: per-source cursor, the durable dirty-study set, retry state, FHIR ids.

The one rule everything rests on: `record_page` marks a page's studies dirty and moves the
cursor in ONE transaction. A crash before it commits replays the page; after it, the studies
are durably dirty. Either way nothing is lost, and re-syncing a study is idempotent.
"""

from __future__ import annotations

import functools
import json
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    CursorResult,
    Engine,
    Executable,
    case,
    create_engine,
    delete,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from dicomcast.config import mask_url
from dicomcast.errors import ConfigError, OperatorError, StateSchemaError, StateUnavailable
from dicomcast.state.models import ContributionRow, SourceRow, StudyRow

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


@dataclass(frozen=True)
class DirtyMark:
    """A study the feed says changed; `event_time` is the source event's time (for lag)."""

    study_key: str
    event_time: float | None = None
    study_uid: str | None = None


@dataclass(frozen=True)
class StudyTask:
    """A snapshot of a dirty study, taken when it was claimed for syncing."""

    id: int
    source: str
    study_key: str
    study_uid: str | None
    generation: int
    attempts: int
    dirty_since: float | None
    event_time: float | None
    content_hash: str | None
    fhir_patient_id: str | None
    fhir_imagingstudy_id: str | None
    instance_count: int | None
    match_key: str | None = None


@dataclass(frozen=True)
class Contribution:
    """A source's mapped part of a study: what it would write if it were the only source."""

    source: str
    study_key: str
    body: dict[str, Any]


@dataclass(frozen=True)
class SyncOutcome:
    """What a successful sync wrote (or found already written)."""

    study_uid: str | None
    content_hash: str | None
    fhir_patient_id: str | None
    fhir_imagingstudy_id: str | None
    instance_count: int | None
    warnings: Sequence[str] = ()
    match_key: str | None = None


@dataclass(frozen=True)
class SourceSummary:
    """One source's state at a glance, for `status`, metrics and alerts."""

    source: str
    cursor: str | None = None
    feed_head: str | None = None
    holder: str | None = None
    held_until: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    oldest_event: float | None = None  # earliest change not yet in FHIR
    oldest_dirty: float | None = None  # when the longest-waiting study became dirty
    last_success_at: float | None = None
    last_poll_at: float | None = None
    resets: int = 0

    def holder_now(self, now: float | None = None) -> str | None:
        """The worker holding the source now; None when nobody does or its lease ran out."""
        now = time.time() if now is None else now
        return self.holder if self.held_until and self.held_until >= now else None

    @property
    def dirty(self) -> int:
        return self.counts.get("dirty", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)


def _changed(session: Session, statement: Executable) -> int:
    """Run an UPDATE/DELETE and say how many rows it touched."""
    result = session.execute(statement)
    return int(result.rowcount) if isinstance(result, CursorResult) else 0


def _task(row: StudyRow) -> StudyTask:
    return StudyTask(
        row.id,
        row.source,
        row.study_key,
        row.study_uid,
        row.generation,
        row.attempts,
        row.dirty_since,
        row.event_time,
        row.content_hash,
        row.fhir_patient_id,
        row.fhir_imagingstudy_id,
        row.instance_count,
        row.match_key,
    )


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
        raise ConfigError(f"state database URL {mask_url(url)!r} is not usable: {exc}") from None


class StateStore:
    """All reads and writes of the state DB; each method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # --- schema

    def _alembic(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        return cfg

    def migrate(self) -> None:
        """Bring the schema to this version's head; refuse a DB written by a newer version."""
        cfg = self._alembic()
        heads = set(ScriptDirectory.from_config(cfg).get_heads())
        known = {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
        with self.engine.begin() as connection:
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
        with self.engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads())

    def ping(self) -> None:
        """Raise StateUnavailable unless the database answers a trivial query."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # --- sources, their leases and cursors

    def ensure_source(self, name: str, kind: str) -> SourceRow:
        with self._session.begin() as session:
            row = session.get(SourceRow, name)
            if row is None:
                row = SourceRow(name=name, kind=kind, resets=0)
                session.add(row)
            return row

    def get_source(self, name: str) -> SourceRow | None:
        with self._session() as session:
            return session.get(SourceRow, name)

    def acquire_source(self, name: str, owner: str, lease: float, now: float | None = None) -> bool:
        """Take (or renew) the lease to tail this source; False while another worker holds it."""
        now = time.time() if now is None else now
        with self._session.begin() as session:
            return bool(
                _changed(
                    session,
                    update(SourceRow)
                    .where(
                        SourceRow.name == name,
                        SourceRow.holder.is_(None)
                        | (SourceRow.holder == owner)
                        | (SourceRow.held_until < now),
                    )
                    .values(holder=owner, held_until=now + lease),
                )
            )

    def release_source(self, name: str, owner: str) -> None:
        with self._session.begin() as session:
            session.execute(
                update(SourceRow)
                .where(SourceRow.name == name, SourceRow.holder == owner)
                .values(holder=None, held_until=None)
            )

    def set_cursor(self, name: str, cursor: str | None, now: float | None = None) -> None:
        """The operator's `cursor set`: refused while a worker holds the source's lease, so a
        running tailer can never overwrite it with its own position a moment later."""
        now = time.time() if now is None else now
        with self._session.begin() as session:
            row = session.get(SourceRow, name)
            if row is None:
                raise OperatorError(f"source {name!r} has no state yet; run the worker once")
            if row.holder and row.held_until and row.held_until >= now:
                raise OperatorError(
                    f"source {name!r} is held by worker {row.holder!r} for another "
                    f"{row.held_until - now:.0f} s; stop it first, then set the cursor"
                )
            row.cursor = cursor

    def record_page(
        self,
        source: str,
        cursor: str,
        feed_head: str | None,
        marks: Iterable[DirtyMark],
        now: float | None = None,
    ) -> int:
        """Mark studies dirty AND move the cursor, atomically. Returns how many were marked."""
        now = time.time() if now is None else now
        marks = list(marks)
        with self._session.begin() as session:
            self._mark(session, source, marks, now)
            session.execute(
                update(SourceRow)
                .where(SourceRow.name == source)
                .values(cursor=cursor, feed_head=feed_head, last_poll_at=now)
            )
        return len(marks)

    def reset_cursor(self, source: str, cursor: str | None) -> None:
        """Operator or archive-reset path: set the cursor, count it as a reset."""
        with self._session.begin() as session:
            session.execute(
                update(SourceRow)
                .where(SourceRow.name == source)
                .values(cursor=cursor, resets=SourceRow.resets + 1)
            )

    def mark_dirty(self, source: str, marks: Iterable[DirtyMark], now: float | None = None) -> int:
        marks = list(marks)
        with self._session.begin() as session:
            self._mark(session, source, marks, time.time() if now is None else now)
        return len(marks)

    def _mark(self, session: Session, source: str, marks: list[DirtyMark], now: float) -> None:
        if not marks:
            return
        # One mark per study: the earliest event time is the one lag is measured from.
        merged: dict[str, DirtyMark] = {}
        for mark in marks:
            prior = merged.get(mark.study_key)
            if prior is None:
                merged[mark.study_key] = mark
            else:
                times = [t for t in (prior.event_time, mark.event_time) if t is not None]
                merged[mark.study_key] = DirtyMark(
                    mark.study_key, min(times) if times else None, prior.study_uid or mark.study_uid
                )
        dialect = session.bind.dialect.name if session.bind else "sqlite"
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        rows = [
            {
                "source": source,
                "study_key": m.study_key,
                "study_uid": m.study_uid,
                "status": "dirty",
                "generation": 1,
                "dirty_since": now,
                "event_time": m.event_time if m.event_time is not None else now,
                "attempts": 0,
                "next_attempt_at": now,
            }
            for m in merged.values()
        ]
        stmt = insert(StudyRow)
        was_dirty = StudyRow.status == "dirty"
        # Two-argument scalar minimum: min() on SQLite, least() on PostgreSQL.
        smaller = func.least if dialect == "postgresql" else func.min
        stmt = stmt.on_conflict_do_update(
            index_elements=["source", "study_key"],
            set_={
                "status": "dirty",
                "generation": StudyRow.generation + 1,
                "study_uid": func.coalesce(stmt.excluded.study_uid, StudyRow.study_uid),
                "dirty_since": case(
                    (was_dirty, StudyRow.dirty_since), else_=stmt.excluded.dirty_since
                ),
                "event_time": case(
                    (was_dirty, smaller(StudyRow.event_time, stmt.excluded.event_time)),
                    else_=stmt.excluded.event_time,
                ),
                # New data deserves a fresh try, but a study already backing off keeps its
                # schedule so that a busy feed cannot turn its retries into a hot loop.
                "attempts": case((was_dirty, StudyRow.attempts), else_=0),
                "next_attempt_at": case(
                    (was_dirty, StudyRow.next_attempt_at), else_=stmt.excluded.next_attempt_at
                ),
            },
        )
        for start in range(0, len(rows), 500):
            session.execute(stmt, rows[start : start + 500])

    # --- the dirty set

    def due(self, source: str, limit: int, now: float | None = None) -> list[StudyTask]:
        """Dirty studies whose time has come and that no live worker holds."""
        now = time.time() if now is None else now
        with self._session() as session:
            rows = session.scalars(
                select(StudyRow)
                .where(
                    StudyRow.source == source,
                    StudyRow.status == "dirty",
                    StudyRow.next_attempt_at <= now,
                    (StudyRow.claimed_until.is_(None)) | (StudyRow.claimed_until < now),
                )
                .order_by(StudyRow.next_attempt_at, StudyRow.id)
                .limit(limit)
            ).all()
            return [_task(r) for r in rows]

    def claim_many(
        self, tasks: Sequence[StudyTask], owner: str, lease: float, now: float | None = None
    ) -> list[StudyTask]:
        """Claim several studies in one transaction; returns those this owner got."""
        if not tasks:
            return []
        now = time.time() if now is None else now
        until = now + lease
        ids = [t.id for t in tasks]
        with self._session.begin() as session:
            session.execute(
                update(StudyRow)
                .where(
                    StudyRow.id.in_(ids),
                    (StudyRow.claimed_until.is_(None)) | (StudyRow.claimed_until < now),
                )
                .values(claimed_by=owner, claimed_until=until)
            )
            got = set(
                session.scalars(
                    select(StudyRow.id).where(
                        StudyRow.id.in_(ids),
                        StudyRow.claimed_by == owner,
                        StudyRow.claimed_until == until,
                    )
                ).all()
            )
        return [t for t in tasks if t.id in got]

    def release_claims(self, source: str, owner: str) -> int:
        """Free the claims a previous run of this same worker left behind (it was killed)."""
        with self._session.begin() as session:
            return _changed(
                session,
                update(StudyRow)
                .where(StudyRow.source == source, StudyRow.claimed_by == owner)
                .values(claimed_by=None, claimed_until=None),
            )

    def release(self, task: StudyTask, not_before: float | None = None) -> None:
        """Give a study back unsynced (e.g. still receiving instances), to try at `not_before`."""
        values: dict[str, Any] = {"claimed_by": None, "claimed_until": None}
        if not_before is not None:
            values["next_attempt_at"] = not_before
        with self._session.begin() as session:
            session.execute(update(StudyRow).where(StudyRow.id == task.id).values(**values))

    def finish_clean(self, task: StudyTask, outcome: SyncOutcome, now: float | None = None) -> bool:
        """Record a successful sync. Clean only if no newer change arrived while it ran."""
        now = time.time() if now is None else now
        common = {
            "study_uid": outcome.study_uid or task.study_uid,
            "content_hash": outcome.content_hash,
            "fhir_patient_id": outcome.fhir_patient_id,
            "fhir_imagingstudy_id": outcome.fhir_imagingstudy_id,
            "instance_count": outcome.instance_count,
            "match_key": outcome.match_key or task.match_key,
            "warnings": json.dumps(list(outcome.warnings)) if outcome.warnings else None,
            "last_synced_at": now,
            "claimed_by": None,
            "claimed_until": None,
            "last_error": None,
            "error_kind": None,
        }
        with self._session.begin() as session:
            done = _changed(
                session,
                update(StudyRow)
                .where(StudyRow.id == task.id, StudyRow.generation == task.generation)
                .values(
                    status="clean",
                    attempts=0,
                    next_attempt_at=None,
                    dirty_since=None,
                    event_time=None,
                    **common,
                ),
            )
            if not done:  # newer data came in: keep it dirty, but remember what was written
                session.execute(update(StudyRow).where(StudyRow.id == task.id).values(**common))
            session.execute(
                update(SourceRow).where(SourceRow.name == task.source).values(last_success_at=now)
            )
            return bool(done)

    def finish_gone(self, task: StudyTask) -> bool:
        """The study no longer exists and FHIR reflects that: forget it (unless it came back)."""
        with self._session.begin() as session:
            return bool(
                _changed(
                    session,
                    delete(StudyRow).where(
                        StudyRow.id == task.id, StudyRow.generation == task.generation
                    ),
                )
            )

    def finish_failed(
        self,
        task: StudyTask,
        error: str,
        kind: str,
        *,
        park: bool,
        retry_at: float | None,
        http_status: int | None = None,
        count_attempt: bool = True,
        now: float | None = None,
    ) -> None:
        """Record a failed attempt: back off until `retry_at`, or park it as failed.

        `count_attempt=False` is for outages: the study waits, but its attempts are not
        spent, so a server down for an hour does not park every study it touched.
        Parking only applies to the generation that failed: newer data gets a fresh try.
        """
        now = time.time() if now is None else now
        values: dict[str, Any] = {
            "attempts": StudyRow.attempts + (1 if count_attempt else 0),
            "last_error": error[:4000],
            "error_kind": kind,
            "error_status": http_status,
            "failed_at": now,
            "claimed_by": None,
            "claimed_until": None,
        }
        with self._session.begin() as session:
            if park:
                parked = _changed(
                    session,
                    update(StudyRow)
                    .where(StudyRow.id == task.id, StudyRow.generation == task.generation)
                    .values(status="failed", next_attempt_at=None, **values),
                )
                if parked:
                    return
                retry_at = now  # newer data arrived meanwhile: try that at once
            session.execute(
                update(StudyRow)
                .where(StudyRow.id == task.id)
                .values(status="dirty", next_attempt_at=retry_at, **values)
            )

    # --- operator actions

    def retry(self, source: str, key: str | None, now: float | None = None) -> int:
        """Make failed (or backing-off) studies due now with fresh attempts; `key` None = all.
        Returns how many studies it touched."""
        now = time.time() if now is None else now
        waiting = (StudyRow.status == "failed") | (
            (StudyRow.status == "dirty") & StudyRow.last_error.is_not(None)
        )
        where = [StudyRow.source == source, waiting]
        if key is not None:
            where.append((StudyRow.study_key == key) | (StudyRow.study_uid == key))
        with self._session.begin() as session:
            return _changed(
                session,
                update(StudyRow)
                .where(*where)
                .values(
                    status="dirty",
                    generation=StudyRow.generation + 1,
                    attempts=0,
                    next_attempt_at=now,
                    dirty_since=func.coalesce(StudyRow.dirty_since, now),
                    event_time=func.coalesce(StudyRow.event_time, now),
                ),
            )

    def resync(self, source: str, marks: Sequence[DirtyMark], now: float | None = None) -> int:
        """Force studies through again: dirty now, and written to FHIR even if unchanged."""
        now = time.time() if now is None else now
        keys = [m.study_key for m in marks]
        with self._session.begin() as session:
            self._mark(session, source, list(marks), now)
            return _changed(
                session,
                update(StudyRow)
                .where(StudyRow.source == source, StudyRow.study_key.in_(keys))
                .values(content_hash=None, attempts=0, next_attempt_at=now),
            )

    # --- what each source contributes to a study several sources hold

    def put_contribution(
        self, source: str, key: str, match_key: str, body: dict[str, Any], now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        values = {"match_key": match_key, "body": _pack(body), "updated_at": now}
        with self._session.begin() as session:
            dialect = session.bind.dialect.name if session.bind else "sqlite"
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            stmt = insert(ContributionRow).values(source=source, study_key=key, **values)
            session.execute(
                stmt.on_conflict_do_update(index_elements=["source", "study_key"], set_=values)
            )

    def contributions(self, match_key: str) -> list[Contribution]:
        """Every source's part of the study with this FHIR match key."""
        with self._session() as session:
            rows = session.scalars(
                select(ContributionRow).where(ContributionRow.match_key == match_key)
            ).all()
            return [Contribution(r.source, r.study_key, _unpack(r.body)) for r in rows]

    def drop_contribution(self, source: str, key: str) -> str | None:
        """Forget a source's part of a study; returns the study's match key, if it had one."""
        with self._session.begin() as session:
            row = session.scalars(
                select(ContributionRow).where(
                    ContributionRow.source == source, ContributionRow.study_key == key
                )
            ).first()
            if row is None:
                return None
            session.delete(row)
            return row.match_key

    def find(self, source: str, key: str) -> list[StudyRow]:
        """Studies of a source by study key or StudyInstanceUID (a UID may name several)."""
        return self._rows(source, (StudyRow.study_key == key) | (StudyRow.study_uid == key))

    def _rows(self, source: str, condition: Any) -> list[StudyRow]:
        with self._session() as session:
            query = select(StudyRow).where(StudyRow.source == source, condition)
            return list(session.scalars(query.order_by(StudyRow.id)).all())

    # --- views for reconcile and status

    def known_studies(self, source: str) -> dict[str, int | None]:
        """study_key -> instance count last synced, for every study the state knows."""
        with self._session() as session:
            rows = session.execute(
                select(StudyRow.study_key, StudyRow.instance_count).where(StudyRow.source == source)
            ).all()
            return {key: count for key, count in rows}

    def counts(self, source: str) -> dict[str, int]:
        with self._session() as session:
            rows = session.execute(
                select(StudyRow.status, func.count())
                .where(StudyRow.source == source)
                .group_by(StudyRow.status)
            ).all()
            return {status: int(n) for status, n in rows}

    def next_due(self, source: str) -> float | None:
        """When the earliest waiting study becomes due (None when none waits)."""
        with self._session() as session:
            return session.scalar(
                select(func.min(StudyRow.next_attempt_at)).where(
                    StudyRow.source == source, StudyRow.status == "dirty"
                )
            )

    def summary(self, source: str) -> SourceSummary:
        with self._session() as session:
            row = session.get(SourceRow, source)
            oldest_event, oldest_dirty = session.execute(
                select(func.min(StudyRow.event_time), func.min(StudyRow.dirty_since)).where(
                    StudyRow.source == source, StudyRow.status == "dirty"
                )
            ).one()
        return SourceSummary(
            source,
            cursor=row.cursor if row else None,
            feed_head=row.feed_head if row else None,
            holder=row.holder if row else None,
            held_until=row.held_until if row else None,
            counts=self.counts(source),
            failures_by_kind=self.failure_kinds(source),
            oldest_event=oldest_event,
            oldest_dirty=oldest_dirty,
            last_success_at=row.last_success_at if row else None,
            last_poll_at=row.last_poll_at if row else None,
            resets=row.resets if row else 0,
        )

    def sources(self) -> list[str]:
        with self._session() as session:
            return list(session.scalars(select(SourceRow.name).order_by(SourceRow.name)).all())

    def failure_kinds(self, source: str) -> dict[str, int]:
        """Parked studies counted by the kind of error that parked them."""
        kind = func.coalesce(StudyRow.error_kind, "unknown")
        with self._session() as session:
            rows = session.execute(
                select(kind, func.count())
                .where(StudyRow.source == source, StudyRow.status == "failed")
                .group_by(kind)
            ).all()
            return {str(k): int(n) for k, n in rows}

    def failures(self, source: str) -> list[StudyRow]:
        """Studies parked as failed or backing off after an error."""
        return self._rows(
            source, (StudyRow.status == "failed") | (StudyRow.last_error.is_not(None))
        )


def _pack(body: dict[str, Any]) -> bytes:
    return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 6)


def _unpack(blob: bytes) -> dict[str, Any]:
    body = json.loads(zlib.decompress(blob))
    return body if isinstance(body, dict) else {}


def _state_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """Database failures surface as StateUnavailable (retriable), never as a raw driver
    error: the transaction was rolled back, so nothing half-recorded remains."""

    @functools.wraps(method)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except SQLAlchemyError as exc:
            raise StateUnavailable(
                f"state database error in {method.__name__}: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]}"
            ) from exc

    return guarded


# Every public store method, wrapped once here rather than decorated one by one.
for _name, _method in list(vars(StateStore).items()):
    if callable(_method) and not _name.startswith("_") and _name != "close":
        setattr(StateStore, _name, _state_errors(_method))
