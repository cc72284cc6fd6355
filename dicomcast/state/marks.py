"""Marking studies dirty: one upsert per study, inside the caller's transaction (the feed
records a page's marks and its cursor together)."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import case, func
from sqlalchemy.orm import Session

from dicomcast.model import DirtyMark
from dicomcast.state.db import Database
from dicomcast.state.models import StudyRow


def _merged(marks: Iterable[DirtyMark]) -> list[DirtyMark]:
    """One mark per study: the earliest event time is the one lag is measured from."""
    merged: dict[str, DirtyMark] = {}
    for mark in marks:
        prior = merged.get(mark.study_key)
        if prior is None:
            merged[mark.study_key] = mark
        else:
            times = [t for t in (prior.event_time, mark.event_time) if t is not None]
            merged[mark.study_key] = DirtyMark(
                mark.study_key,
                min(times) if times else None,
                prior.study_uid or mark.study_uid,
                mark.count if mark.count is not None else prior.count,
                mark.identity or prior.identity,
            )
    return list(merged.values())


def mark(
    db: Database,
    session: Session,
    source: str,
    marks: list[DirtyMark],
    now: float,
    *,
    lift: bool = True,
) -> None:
    """Mark studies dirty inside the caller's transaction (an upsert per study). A live
    change `lift`s a study a backfill queued to live priority; a reconcile scan does not
    (it finds every study a backfill queued "changed", as none was synced yet)."""
    if not marks:
        return
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
            "priority": 0,
            "seen_count": m.count,
            "listed_identity": m.identity,
        }
        for m in _merged(marks)
    ]
    stmt = db.insert()(StudyRow)
    # Dirty for a live change already: keep its times and schedule. Dirty only for a
    # backfill: the live change is news, due now and timed from now.
    was_dirty = (StudyRow.status == "dirty") & (StudyRow.priority == 0 if lift else True)
    priority = 0 if lift else case((StudyRow.status == "dirty", StudyRow.priority), else_=0)
    # Two-argument scalar minimum: min() on SQLite, least() on PostgreSQL.
    smaller = func.least if db.dialect == "postgresql" else func.min
    stmt = stmt.on_conflict_do_update(
        index_elements=["source", "study_key"],
        set_={
            "status": "dirty",
            "generation": StudyRow.generation + 1,
            "study_uid": func.coalesce(stmt.excluded.study_uid, StudyRow.study_uid),
            "seen_count": func.coalesce(stmt.excluded.seen_count, StudyRow.seen_count),
            "listed_identity": func.coalesce(
                stmt.excluded.listed_identity, StudyRow.listed_identity
            ),
            "held_at": None,
            "priority": priority,  # a live change is never left behind a backfill
            "dirty_since": case((was_dirty, StudyRow.dirty_since), else_=stmt.excluded.dirty_since),
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
