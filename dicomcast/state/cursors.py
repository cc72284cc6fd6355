"""Per-source feed cursors and the leases that make one worker a source's only tailer.

The one rule everything rests on: `record_page` marks a page's studies dirty and moves the
cursor in ONE transaction. A crash before it commits replays the page; after it, the studies
are durably dirty. Either way nothing is lost, and re-syncing a study is idempotent.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import func, select, update

from dicomcast.errors import OperatorError
from dicomcast.model import DirtyMark, Skipped
from dicomcast.state.db import Database, changed
from dicomcast.state.marks import mark
from dicomcast.state.models import FeedSkipRow, SourceRow, WorkerRow


class Cursors:
    """The `sources` table: where each feed was read up to, and who is reading it."""

    db: Database

    def ensure_source(self, name: str, kind: str) -> SourceRow:
        """The source's row, made if missing. Several workers starting at once may all
        make it: the insert does nothing when another one got there first."""
        with self.db.write("ensure_source") as session:
            session.execute(
                self.db.insert()(SourceRow)
                .values(name=name, kind=kind, resets=0)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            row = session.get(SourceRow, name)
            assert row is not None
            return row

    def get_source(self, name: str) -> SourceRow | None:
        with self.db.read("get_source") as session:
            return session.get(SourceRow, name)

    def cursor(self, name: str) -> str | None:
        """Where the source's feed is to be read from next (None: its beginning)."""
        row = self.get_source(name)
        return row.cursor if row else None

    def acquire_source(self, name: str, owner: str, lease: float, now: float | None = None) -> bool:
        """Take (or renew) the lease to tail this source; False while another worker holds it."""
        now = time.time() if now is None else now
        with self.db.write("acquire_source") as session:
            return bool(
                changed(
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

    def last_heard(self, owner: str) -> tuple[str | None, float] | None:
        """Which process last spoke as `owner` (host:pid), and when; None: never."""
        with self.db.read("last_heard") as session:
            row = session.get(WorkerRow, owner)
            return (row.instance, row.seen_at) if row else None

    def leave(self, owner: str, instance: str) -> None:
        """This process no longer speaks as `owner` (a clean exit): the name is free."""
        with self.db.write("leave") as session:
            session.execute(
                update(WorkerRow)
                .where(WorkerRow.name == owner, WorkerRow.instance == instance)
                .values(instance=None)
            )

    def heartbeat(
        self, owner: str, within: float, now: float | None = None, instance: str | None = None
    ) -> int:
        """Record that `owner` (this process: `instance`) is alive; returns how many
        workers were seen within the last `within` seconds (this one included)."""
        now = time.time() if now is None else now
        stmt = self.db.insert()(WorkerRow).values(name=owner, seen_at=now, instance=instance)
        stmt = stmt.on_conflict_do_update(
            index_elements=["name"], set_={"seen_at": now, "instance": instance}
        )
        with self.db.write("heartbeat") as session:
            session.execute(stmt)
            seen = session.scalar(
                select(func.count()).select_from(WorkerRow).where(WorkerRow.seen_at >= now - within)
            )
        return max(1, int(seen or 0))

    def release_source(self, name: str, owner: str) -> None:
        with self.db.write("release_source") as session:
            session.execute(
                update(SourceRow)
                .where(SourceRow.name == name, SourceRow.holder == owner)
                .values(holder=None, held_until=None)
            )

    def set_cursor(
        self, name: str, cursor: str | None, now: float | None = None, kind: str | None = None
    ) -> None:
        """The operator's `cursor set`: refused while a worker holds the source's lease, so a
        running tailer can never overwrite it with its own position a moment later. With
        `kind` (the source is configured), a source the state DB does not know yet is
        registered first: a fresh state DB may start from a position of the operator's."""
        now = time.time() if now is None else now
        with self.db.write("set_cursor") as session:
            row = session.get(SourceRow, name)
            if row is None and kind is not None:
                row = SourceRow(name=name, kind=kind, resets=0)
                session.add(row)
            if row is None:
                raise OperatorError(f"source {name!r} has no state yet; run the worker once")
            if row.holder and row.held_until and row.held_until >= now:
                raise OperatorError(
                    f"source {name!r} is held by worker {row.holder!r} for another "
                    f"{row.held_until - now:.0f} s; stop it first, then set the cursor"
                )
            row.cursor = cursor
            row.feed_error = None

    def record_feed_error(self, source: str, error: str | None) -> None:
        """Why the source's feed stopped on a stored value (None: it reads again)."""
        with self.db.write("record_feed_error") as session:
            session.execute(
                update(SourceRow).where(SourceRow.name == source).values(feed_error=error)
            )

    def record_page(
        self,
        source: str,
        cursor: str,
        feed_head: str | None,
        marks: Iterable[DirtyMark],
        now: float | None = None,
        skipped: Iterable[Skipped] = (),
    ) -> int:
        """Mark studies dirty AND move the cursor, atomically, with the entries that could
        not be used recorded in the same transaction. Returns how many were marked."""
        now = time.time() if now is None else now
        marks = list(marks)
        with self.db.write("record_page") as session:
            mark(self.db, session, source, marks, now)
            session.add_all(_skip_row(source, s, now) for s in skipped)
            session.execute(
                update(SourceRow)
                .where(SourceRow.name == source)
                .values(cursor=cursor, feed_head=feed_head, last_poll_at=now)
            )
        return len(marks)

    def record_notified(
        self, source: str, marks: Iterable[DirtyMark], skipped: Iterable[Skipped] = ()
    ) -> int:
        """Mark the studies notifications named, with those that named none recorded, in
        one transaction (the notifications are acknowledged only after it commits)."""
        now = time.time()
        marks = list(marks)
        with self.db.write("record_notified") as session:
            mark(self.db, session, source, marks, now)
            session.add_all(_skip_row(source, s, now) for s in skipped)
            session.execute(
                update(SourceRow).where(SourceRow.name == source).values(last_poll_at=now)
            )
        return len(marks)

    def record_skip(self, source: str, cursor: str, skipped: Skipped) -> None:
        """Step the cursor past one entry that cannot be read, and record it, atomically."""
        now = time.time()
        with self.db.write("record_skip") as session:
            session.execute(update(SourceRow).where(SourceRow.name == source).values(cursor=cursor))
            session.add(_skip_row(source, skipped, now))

    def reset_cursor(self, source: str, cursor: str | None) -> None:
        """Operator or archive-reset path: set the cursor, count it as a reset."""
        with self.db.write("reset_cursor") as session:
            session.execute(
                update(SourceRow)
                .where(SourceRow.name == source)
                .values(cursor=cursor, resets=SourceRow.resets + 1, feed_error=None)
            )


def _skip_row(source: str, skipped: Skipped, at: float) -> FeedSkipRow:
    """A skipped feed entry as the `feed_skips` table holds it (its columns' lengths)."""
    return FeedSkipRow(
        source=source, position=skipped.position[:200], reason=skipped.reason[:500], at=at
    )
