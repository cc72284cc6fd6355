"""The dirty-study queue: marks, claims, and how each sync attempt ends.

`generation` grows every time a study is marked dirty. A sync records its result only for
the generation it started from: newer data that arrived meanwhile keeps the study dirty.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, delete, func, select, update

from dicomcast.model import DirtyMark, StudyTask, Written
from dicomcast.state.db import Database, changed
from dicomcast.state.marks import mark
from dicomcast.state.models import SourceRow, StudyRow


def task_of(row: StudyRow) -> StudyTask:
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
        row.failed_at,
        row.error_status,
        row.priority,
        row.deletion == "approved",
    )


# What a successful sync records, built once (statement building is a sync's cost too).
_STUDIES = cast(Table, StudyRow.__table__)
_SOURCES = cast(Table, SourceRow.__table__)
_WRITTEN = (
    "study_uid",
    "content_hash",
    "fhir_patient_id",
    "fhir_imagingstudy_id",
    "instance_count",
    "match_key",
    "warnings",
    "last_synced_at",
)
_CLEAN = {
    "status": "clean",
    "attempts": 0,
    "next_attempt_at": None,
    "dirty_since": None,
    "event_time": None,
    "deletion": None,
}
_KEEP_WRITTEN = (
    update(_STUDIES)
    .where(_STUDIES.c.id == bindparam("row"))
    .values(
        **{name: bindparam(f"w_{name}") for name in _WRITTEN},
        claimed_by=None,
        claimed_until=None,
        last_error=None,
        error_detail=None,
        error_kind=None,
    )
)
_FINISH_CLEAN = _KEEP_WRITTEN.where(_STUDIES.c.generation == bindparam("gen")).values(**_CLEAN)
_LAST_SUCCESS = (
    update(_SOURCES)
    .where(_SOURCES.c.name == bindparam("source"))
    .values(last_success_at=bindparam("at"))
)


def _due(source: str, now: float) -> tuple[ColumnElement[bool], ...]:
    """A study of `source` that is dirty, whose time has come, and that no live worker
    holds (a claim past its lease is nobody's)."""
    return (
        StudyRow.source == source,
        StudyRow.status == "dirty",
        StudyRow.next_attempt_at <= now,
        (StudyRow.claimed_until.is_(None)) | (StudyRow.claimed_until < now),
    )


class Queue:
    """The dirty set: what is due, who holds it, and how each attempt ended."""

    db: Database
    _success_at: dict[str, float]  # when each source's last_success_at was last written

    def baseline(self, source: str, present: dict[str, int]) -> None:
        """Record studies the archive holds as seen, without syncing them (`cursor set head`
        starts from now: history is skipped, and a study is synced once it changes). Studies
        the state DB knows already are left as they are."""
        rows = [
            {
                "source": source,
                "study_key": key,
                "status": "clean",
                "generation": 1,
                "attempts": 0,
                "instance_count": count,
                "last_synced_at": None,
            }
            for key, count in present.items()
        ]
        stmt = self.db.insert()(StudyRow).on_conflict_do_nothing(
            index_elements=["source", "study_key"]
        )
        with self.db.write("baseline") as session:
            for start in range(0, len(rows), 500):
                session.execute(stmt, rows[start : start + 500])

    def mark_dirty(
        self,
        source: str,
        marks: Iterable[DirtyMark],
        now: float | None = None,
        *,
        lift: bool = True,
    ) -> int:
        marks = list(marks)
        with self.db.write("mark_dirty") as session:
            mark(self.db, session, source, marks, time.time() if now is None else now, lift=lift)
        return len(marks)

    def due(self, source: str, limit: int, now: float | None = None) -> list[StudyTask]:
        """Dirty studies whose time has come and that no live worker holds."""
        now = time.time() if now is None else now
        with self.db.read("due") as session:
            rows = session.scalars(
                select(StudyRow)
                .where(*_due(source, now))
                .order_by(StudyRow.priority, StudyRow.next_attempt_at, StudyRow.id)
                .limit(limit)
            ).all()
            return [task_of(r) for r in rows]

    def claim_due(
        self,
        source: str,
        owner: str,
        lease: float,
        limit: int,
        *,
        priority: int = 0,
        now: float | None = None,
    ) -> list[StudyTask]:
        """Claim up to `limit` due studies of one priority in one statement, earliest
        first. On PostgreSQL `FOR UPDATE SKIP LOCKED` lets workers claiming at once each
        get different studies instead of queueing on the same rows; SQLite has one writer
        at a time anyway."""
        if limit <= 0:
            return []
        now = time.time() if now is None else now
        pick = (
            select(StudyRow.id)
            .where(*_due(source, now), StudyRow.priority == priority)
            .order_by(StudyRow.next_attempt_at, StudyRow.id)
            .limit(limit)
        )
        if self.db.dialect == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        claim = (
            update(StudyRow)
            .where(StudyRow.id.in_(pick.scalar_subquery()))
            .values(claimed_by=owner, claimed_until=now + lease)
            .returning(StudyRow)
            .execution_options(synchronize_session=False)
        )
        with self.db.write("claim_due") as session:
            rows = session.scalars(claim).all()
            tasks = [task_of(r) for r in rows]
        return sorted(tasks, key=lambda t: (t.dirty_since or 0, t.id))

    def next_due(self, source: str) -> float | None:
        """When the earliest waiting study becomes due (None when none waits)."""
        with self.db.read("next_due") as session:
            return session.scalar(
                select(func.min(StudyRow.next_attempt_at)).where(
                    StudyRow.source == source, StudyRow.status == "dirty"
                )
            )

    def release_claims(self, source: str, owner: str) -> int:
        """Free the claims a previous run of this same worker left behind (it was killed)."""
        with self.db.write("release_claims") as session:
            return changed(
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
        with self.db.write("release") as session:
            session.execute(update(StudyRow).where(StudyRow.id == task.id).values(**values))

    def finish_clean(self, task: StudyTask, written: Written, now: float | None = None) -> bool:
        """Record a successful sync. Clean only if no newer change arrived while it ran."""
        now = time.time() if now is None else now
        params = {
            "row": task.id,
            "gen": task.generation,
            "w_study_uid": written.study_uid or task.study_uid,
            "w_content_hash": written.content_hash,
            "w_fhir_patient_id": written.fhir_patient_id,
            "w_fhir_imagingstudy_id": written.fhir_imagingstudy_id,
            "w_instance_count": written.instance_count,
            "w_match_key": written.match_key or task.match_key,
            "w_warnings": json.dumps(list(written.warnings)) if written.warnings else None,
            "w_last_synced_at": now,
        }
        # `last_success_at` is for alerts: once a second is enough, and it spares a hot row.
        success = abs(now - self._success_at.get(task.source, -1e18)) >= 1.0
        with self.db.write("finish_clean") as session:
            done = changed(session, _FINISH_CLEAN, params)
            if not done:  # newer data came in: keep it dirty, but remember what was written
                session.execute(_KEEP_WRITTEN, params)
            if success:
                session.execute(_LAST_SUCCESS, {"source": task.source, "at": now})
        if success:
            self._success_at[task.source] = now
        return bool(done)

    def finish_gone(self, task: StudyTask) -> bool:
        """The study no longer exists and FHIR reflects that: forget it (unless it came back)."""
        with self.db.write("finish_gone") as session:
            return bool(
                changed(
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
        detail: str | None = None,
        seen_count: int | None = None,
        study_uid: str | None = None,
        now: float | None = None,
    ) -> None:
        """Record a failed attempt: back off until `retry_at`, or park it as failed.
        `error` carries no patient data; `detail` (the server's words) may.

        `count_attempt=False` is for outages: the study waits, but its attempts are not
        spent, so a server down for an hour does not park every study it touched.
        Parking only applies to the generation that failed: newer data gets a fresh try.
        `seen_count`, the instance count the attempt saw, is what a listing must differ
        from before it tries a parked study again.
        """
        now = time.time() if now is None else now
        values: dict[str, Any] = {
            "attempts": StudyRow.attempts + (1 if count_attempt else 0),
            "last_error": error[:4000],
            "error_detail": detail[:8000] if detail else None,
            "error_kind": kind,
            "error_status": http_status,
            "failed_at": now,
            "claimed_by": None,
            "claimed_until": None,
        }
        if seen_count is not None:
            values["seen_count"] = seen_count
        if study_uid and len(study_uid) <= 64:  # operators find a failure by its UID
            values["study_uid"] = study_uid
        with self.db.write("finish_failed") as session:
            if park:
                parked = changed(
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
        with self.db.write("retry") as session:
            return changed(
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
        with self.db.write("resync") as session:
            mark(self.db, session, source, list(marks), now)
            return changed(
                session,
                update(StudyRow)
                .where(StudyRow.source == source, StudyRow.study_key.in_(keys))
                .values(content_hash=None, attempts=0, next_attempt_at=now),
            )
