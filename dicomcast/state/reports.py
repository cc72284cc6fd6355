"""Read-only views of the state for reconcile scans, `status`, `failures` and metrics."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import func, select

from dicomcast.model import KnownStudy, SourceSummary
from dicomcast.state.backfills import runs
from dicomcast.state.db import Database
from dicomcast.state.models import FeedSkipRow, SourceRow, StudyRow


class Reports:
    """Counts, summaries and study rows; nothing here writes."""

    db: Database

    def find(self, source: str, key: str) -> list[StudyRow]:
        """Studies of a source by study key or StudyInstanceUID (a UID may name several)."""
        return self._rows("find", source, (StudyRow.study_key == key) | (StudyRow.study_uid == key))

    def failures(self, source: str) -> list[StudyRow]:
        """Studies parked as failed or backing off after an error."""
        return self._rows(
            "failures", source, (StudyRow.status == "failed") | (StudyRow.last_error.is_not(None))
        )

    def _rows(self, what: str, source: str, condition: Any) -> list[StudyRow]:
        with self.db.read(what) as session:
            query = select(StudyRow).where(StudyRow.source == source, condition)
            return list(session.scalars(query.order_by(StudyRow.id)).all())

    def known_studies(self, source: str) -> dict[str, KnownStudy]:
        """study_key -> what the state knows of it, for every study of the source."""
        with self.db.read("known_studies") as session:
            rows = session.execute(
                select(
                    StudyRow.study_key,
                    StudyRow.status,
                    StudyRow.instance_count,
                    StudyRow.seen_count,
                    StudyRow.listed_identity,
                ).where(StudyRow.source == source)
            ).all()
            return {
                key: KnownStudy(status, count, seen, ident)
                for key, status, count, seen, ident in rows
            }

    def counts(self, source: str) -> dict[str, int]:
        with self.db.read("counts") as session:
            rows = session.execute(
                select(StudyRow.status, func.count())
                .where(StudyRow.source == source)
                .group_by(StudyRow.status)
            ).all()
            return {status: int(n) for status, n in rows}

    def failure_kinds(self, source: str) -> dict[str, int]:
        """Parked studies counted by the kind of error that parked them."""
        kind = func.coalesce(StudyRow.error_kind, "unknown")
        with self.db.read("failure_kinds") as session:
            rows = session.execute(
                select(kind, func.count())
                .where(StudyRow.source == source, StudyRow.status == "failed")
                .group_by(kind)
            ).all()
            return {str(k): int(n) for k, n in rows}

    def feed_skips(self, source: str, limit: int = 100) -> list[FeedSkipRow]:
        """The feed entries skipped most recently, newest first."""
        with self.db.read("feed_skips") as session:
            return list(
                session.scalars(
                    select(FeedSkipRow)
                    .where(FeedSkipRow.source == source)
                    .order_by(FeedSkipRow.id.desc())
                    .limit(limit)
                ).all()
            )

    def sources(self) -> list[str]:
        with self.db.read("sources") as session:
            return list(session.scalars(select(SourceRow.name).order_by(SourceRow.name)).all())

    def summary(self, source: str) -> SourceSummary:
        with self.db.read("summary") as session:
            row = session.get(SourceRow, source)
            # Lag is the live changes' (a backfill's studies wait on purpose: see `backfill`).
            oldest_event, oldest_dirty = session.execute(
                select(func.min(StudyRow.event_time), func.min(StudyRow.dirty_since)).where(
                    StudyRow.source == source, StudyRow.status == "dirty", StudyRow.priority == 0
                )
            ).one()
            backfill = runs(session, source, time.time(), unfinished=True)
            skips = session.scalar(
                select(func.count()).select_from(FeedSkipRow).where(FeedSkipRow.source == source)
            )
            seen = session.scalar(  # recorded by `cursor set head`, never synced
                select(func.count())
                .select_from(StudyRow)
                .where(
                    StudyRow.source == source,
                    StudyRow.status == "clean",
                    StudyRow.last_synced_at.is_(None),
                )
            )
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
            feed_skips=int(skips or 0),
            seen=int(seen or 0),
            feed_error=row.feed_error if row else None,
            backfill=backfill[0] if backfill else None,
        )
