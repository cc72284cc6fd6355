"""Backfill runs: the archive's existing studies, marked dirty behind live changes.

A run lists the archive page by page; each page's studies are marked and the run's resume
point saved in one transaction, so a run that crashed resumes after its last saved page and
marks nothing twice. A study the state DB has synced already is left alone (it is the live
path's); one it only knows as seen (`cursor set head`) is synced now.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session

from dicomcast.model import BackfillProgress
from dicomcast.state.db import Database
from dicomcast.state.models import BackfillRow, StudyRow

log = logging.getLogger(__name__)
MAX_LIMIT = 1e6  # what `backfill --max-rate/--max-requests` accept at most
_said: set[tuple[int, str]] = set()  # runs whose unusable limit was logged

BACKFILL = 1  # the priority of a study only a backfill asked for (live changes are 0)


@dataclass(frozen=True)
class Limits:
    """A running backfill's pace (all workers together); None is unlimited."""

    studies: float | None
    requests: float | None


class Backfills:
    db: Database

    def open_backfill(
        self,
        source: str,
        since: str | None,
        until: str | None,
        max_rate: float | None,
        max_requests: float | None,
        now: float | None = None,
    ) -> BackfillRow:
        """The unfinished run of this source and span (its limits updated), or a new one."""
        now = time.time() if now is None else now
        self.backfills(source, now, unfinished=True)  # a settled run is over: start anew
        with self.db.write("open_backfill") as session:
            row = session.scalars(
                select(BackfillRow).where(
                    BackfillRow.source == source,
                    BackfillRow.since.is_(since) if since is None else BackfillRow.since == since,
                    BackfillRow.until.is_(until) if until is None else BackfillRow.until == until,
                    BackfillRow.finished_at.is_(None),
                )
            ).first()
            if row is None:
                row = BackfillRow(
                    source=source, since=since, until=until, listed=0, marked=0, started_at=now
                )
                session.add(row)
            row.max_rate, row.max_requests = max_rate, max_requests
            session.flush()
            return row

    def mark_backfill(
        self,
        run: BackfillRow,
        keys: Sequence[str],
        after: str | None,
        now: float | None = None,
    ) -> int:
        """Mark a listed page for the run and move its resume point past it, at once;
        returns how many of the page's studies it marked."""
        now = time.time() if now is None else now
        unique = list(dict.fromkeys(keys))
        rows = [
            {
                "source": run.source,
                "study_key": key,
                "status": "dirty",
                "generation": 1,
                "dirty_since": now,
                "event_time": now,
                "attempts": 0,
                "next_attempt_at": now,
                "priority": BACKFILL,
                "backfill": run.id,
            }
            for key in unique
        ]
        marked = 0
        with self.db.write("mark_backfill") as session:
            insert = self.db.insert()(StudyRow)
            for start in range(0, len(rows), 500):
                chunk = rows[start : start + 500]
                known = set(
                    session.scalars(
                        select(StudyRow.study_key).where(
                            StudyRow.source == run.source,
                            StudyRow.study_key.in_([r["study_key"] for r in chunk]),
                        )
                    ).all()
                )
                fresh = [r for r in chunk if r["study_key"] not in known]
                if fresh:
                    session.execute(insert.on_conflict_do_nothing(), fresh)
                    marked += len(fresh)
                # Seen but never synced (`cursor set head`): the backfill syncs it now.
                seen = [r["study_key"] for r in chunk if r["study_key"] in known]
                if seen:
                    result = session.execute(
                        update(StudyRow)
                        .where(
                            StudyRow.source == run.source,
                            StudyRow.study_key.in_(seen),
                            StudyRow.status == "clean",
                            StudyRow.last_synced_at.is_(None),
                        )
                        .values(
                            status="dirty",
                            generation=StudyRow.generation + 1,
                            dirty_since=now,
                            event_time=now,
                            attempts=0,
                            next_attempt_at=now,
                            priority=BACKFILL,
                            backfill=run.id,
                        )
                    )
                    marked += int(getattr(result, "rowcount", 0) or 0)
            session.execute(
                update(BackfillRow)
                .where(BackfillRow.id == run.id)
                .values(
                    after=after,
                    listed=BackfillRow.listed + len(unique),
                    marked=BackfillRow.marked + marked,
                    listed_at=now if after is None else None,
                )
            )
        return marked

    def cancel_backfills(self, source: str, now: float | None = None) -> int:
        """End the source's unfinished runs: their studies not yet synced (and not being
        synced now) go back to "seen, not synced", as `cursor set head` left them; live
        changes to them are synced as ever. Returns how many were taken back."""
        now = time.time() if now is None else now
        with self.db.write("cancel_backfills") as session:
            open_runs = select(BackfillRow.id).where(
                BackfillRow.source == source, BackfillRow.finished_at.is_(None)
            )
            taken = session.execute(
                update(StudyRow)
                .where(
                    StudyRow.source == source,
                    StudyRow.status == "dirty",
                    StudyRow.priority == BACKFILL,
                    StudyRow.claimed_by.is_(None),
                    StudyRow.backfill.in_(open_runs.scalar_subquery()),
                )
                .values(
                    status="clean",
                    generation=StudyRow.generation + 1,
                    priority=0,
                    backfill=None,
                    attempts=0,
                    dirty_since=None,
                    event_time=None,
                    next_attempt_at=None,
                )
            )
            session.execute(
                update(BackfillRow)
                .where(BackfillRow.source == source, BackfillRow.finished_at.is_(None))
                .values(finished_at=now, listed_at=func.coalesce(BackfillRow.listed_at, now))
            )
        return int(getattr(taken, "rowcount", 0) or 0)

    def backfill_limits(self) -> dict[str, Limits]:
        """The pace of each source's running backfill (the strictest, if several run);
        runs found settled on the way are recorded as finished."""
        limits: dict[str, Limits] = {}
        for run in self.backfills(unfinished=True):
            if run.finished_at is None:
                prior = limits.get(run.source, Limits(None, None))
                limits[run.source] = Limits(
                    _least(prior.studies, _usable(run, "max_rate", run.max_rate)),
                    _least(prior.requests, _usable(run, "max_requests", run.max_requests)),
                )
        return limits

    def backfills(
        self, source: str | None = None, now: float | None = None, *, unfinished: bool = False
    ) -> list[BackfillProgress]:
        """Every run's progress, newest first; a run whose listing ended and whose studies
        all settled is recorded as finished on the way."""
        now = time.time() if now is None else now
        with self.db.write("backfills") as session:
            found = []
            for run in runs(session, source, now, unfinished=unfinished):
                if run.finished_at is None and not run.listing and not run.waiting:
                    session.execute(
                        update(BackfillRow).where(BackfillRow.id == run.id).values(finished_at=now)
                    )
                    run = replace(run, finished_at=now)
                found.append(run)
            return found


def runs(
    session: Session, source: str | None, now: float, *, unfinished: bool = False
) -> list[BackfillProgress]:
    """The backfill runs (of one source, unfinished only), newest first, with progress.
    A study deleted meanwhile has no row left: it counts as done."""
    query = select(BackfillRow).order_by(BackfillRow.id.desc())
    if source is not None:
        query = query.where(BackfillRow.source == source)
    if unfinished:
        query = query.where(BackfillRow.finished_at.is_(None))
    rows = session.scalars(query).all()
    counts = {
        run_id: (int(waiting or 0), int(failed or 0))
        for run_id, waiting, failed in session.execute(
            select(
                StudyRow.backfill,
                func.sum(case((StudyRow.status == "dirty", 1), else_=0)),
                func.sum(case((StudyRow.status == "failed", 1), else_=0)),
            )
            .where(StudyRow.backfill.in_([r.id for r in rows]))
            .group_by(StudyRow.backfill)
        ).all()
    }
    found = []
    for row in rows:
        waiting, failed = counts.get(row.id, (0, 0))
        done = max(0, row.marked - waiting - failed)
        elapsed = (row.finished_at or now) - row.started_at
        found.append(
            BackfillProgress(
                row.id,
                row.source,
                row.since,
                row.until,
                row.listed,
                row.marked,
                done,
                failed,
                row.listed_at is None,
                row.started_at,
                row.finished_at,
                (done + failed) / elapsed if elapsed > 0 else 0.0,
                row.max_rate,
                row.max_requests,
            )
        )
    return found


def _usable(run: BackfillProgress, name: str, limit: float | None) -> float | None:
    """A stored limit the pacing can use; one it cannot (infinite, not a number, past
    MAX_LIMIT: stored before `backfill` checked it) counts as no limit, said once a run,
    instead of overflowing every worker's pacing at each cycle."""
    if limit is None or (math.isfinite(limit) and 0 < limit <= MAX_LIMIT):
        return limit
    if (run.id, name) not in _said:
        _said.add((run.id, name))
        log.warning(
            "backfill %d has a %s of %r that cannot be used: it runs unpaced (cancel it and "
            "start it again with a limit of at most %g)",
            run.id,
            name,
            limit,
            MAX_LIMIT,
            extra={"source": run.source},
        )
    return None


def _least(a: float | None, b: float | None) -> float | None:
    present = [v for v in (a, b) if v is not None]
    return min(present) if present else None
