"""Source -> dirty set: tail each source's change feed, and scan the sources whose feed
does not log deletions for studies that vanished or changed size without an entry.

Each feed page is recorded with its cursor in one transaction (`record_page`), so a crash
replays at most a page and loses nothing. The feed only says *which* studies changed.

A bad entry never stops the feed: the source skips it (a malformed position, a key no URL
may carry, a position past the feed's head) and it is recorded with its position. A page
that fails by itself (a 4xx, an answer that cannot be parsed) is read again at once; after
three failures in a row the feed is "failing" (a metric, and `/readyz` through `check`) and
is read one entry at a time, and an entry that still cannot be read, while the server
answers its health probe, is skipped and recorded, so a backfill (`run --once`) goes on
too. If the health probe fails, it is an outage: the source pauses and nothing is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from dicomcast.errors import (
    DicomcastError,
    RetriableError,
    SourceRejected,
    SourceUnavailable,
    StateUnavailable,
    StoredValueError,
    failure_class,
)
from dicomcast.model import DirtyMark, KnownStudy, Skipped, source_dependency
from dicomcast.ops.metrics import Metrics
from dicomcast.sources.base import (
    UNCOUNTED,
    ChangeFeed,
    ListsIdentities,
    Notifications,
    Source,
    StudyListing,
    listing_is_feed,
)
from dicomcast.sync.pauses import Pauses

log = logging.getLogger(__name__)


class FeedState(Protocol):
    """The part of the state DB the feed writes: cursors and dirty marks."""

    def cursor(self, name: str) -> str | None: ...

    def record_page(
        self,
        source: str,
        cursor: str,
        feed_head: str | None,
        marks: Iterable[DirtyMark],
        now: float | None = None,
        skipped: Iterable[Skipped] = (),
    ) -> int: ...

    def reset_cursor(self, source: str, cursor: str | None) -> None: ...

    def record_feed_error(self, source: str, error: str | None) -> None: ...

    def known_studies(self, source: str) -> dict[str, KnownStudy]: ...

    def mark_dirty(
        self,
        source: str,
        marks: Iterable[DirtyMark],
        now: float | None = None,
        *,
        lift: bool = True,
    ) -> int: ...

    def record_skip(self, source: str, cursor: str, skipped: Skipped) -> None: ...

    def record_notified(
        self, source: str, marks: Iterable[DirtyMark], skipped: Iterable[Skipped] = ()
    ) -> int: ...


class FeedSource(Source, ChangeFeed, Protocol):
    """A source with a change feed (the feed also probes it, to tell an outage)."""


FAILING_AFTER = 3  # a page failing this many times in a row is read one entry at a time
RETRY_WAIT = 0.2  # seconds (times the failures so far) before a failed page is read again
MAX_STEPS = 1000  # pages (or stepped-past entries) in one tail, so one poll always ends
MAX_KEY, MAX_UID = 200, 64  # what the state DB's columns hold


class FeedFailing(DicomcastError):
    """A source's change feed keeps failing at one position."""


def _usable(
    marks: list[DirtyMark], skipped: list[Skipped]
) -> tuple[list[DirtyMark], list[Skipped]]:
    """The marks the state DB can hold; the others join the skipped entries."""
    good = [
        m
        for m in marks
        if 0 < len(m.study_key) <= MAX_KEY and (m.study_uid is None or len(m.study_uid) <= MAX_UID)
    ]
    if len(good) == len(marks):
        return marks, skipped
    bad = len(marks) - len(good)
    return good, [*skipped, Skipped("page", f"{bad} entries with a key or UID too long to keep")]


class Feed:
    def __init__(
        self,
        state: FeedState,
        sources: Mapping[str, Source],
        metrics: Metrics,
        *,
        page_size: int,
        stop: threading.Event,
        totals: Counter[str],
        beat: Callable[[], None],
    ) -> None:
        self.state = state
        self.sources = sources
        self.metrics = metrics
        self.page_size = page_size
        self.stop = stop
        self.totals = totals
        self.beat = beat
        self.failures: dict[str, int] = {}  # source -> page failures in a row
        self.unusable: dict[str, str] = {}  # source -> the stored value its feed cannot use

    def tail(self, name: str) -> int:
        """Read one source's feed to its end (or until stopped); how many studies were
        marked dirty."""
        source = self.sources[name]
        if isinstance(source, Notifications):  # told of changes; listed at each scan
            try:
                return self._notified(name, source)
            except (SourceRejected, SourceUnavailable) as exc:
                # Notifications unreadable: this poll lists instead (if the archive itself
                # is down, the listing says so, and the source pauses).
                log.warning(
                    "notifications could not be read (%s): listing instead",
                    failure_class(exc),
                    extra={"source": name},
                )
        if not isinstance(source, ChangeFeed):  # the listing is the feed
            marked = self.scan(name)
            self.beat()
            return marked
        marked = 0
        steps = 0
        while not self.stop.is_set() and steps < MAX_STEPS:
            steps += 1
            cursor = self.state.cursor(name)
            failing = self.failures.get(name, 0) >= FAILING_AFTER
            try:
                page = source.read_changes(cursor, 1 if failing else self.page_size)
            except StoredValueError as exc:
                self._unusable(name, str(exc))
                break
            except (SourceRejected, SourceUnavailable) as exc:
                if isinstance(exc, SourceUnavailable) and exc.outage:
                    raise
                if not self._page_failed(name, source, cursor, exc) and self.stop.wait(
                    RETRY_WAIT * self.failures[name]
                ):
                    break
                continue  # again (one entry at a time once failing), or past the bad entry
            self._page_read(name)
            if page.reset:
                self.state.reset_cursor(name, page.cursor)
                self.scan(name)
                continue
            marks, skipped = _usable(page.marks, page.skipped)
            marked += self.state.record_page(name, page.cursor, page.head, marks, skipped=skipped)
            self._skipped(name, skipped)
            self.totals["changes"] += page.changes_read
            self.metrics.changes_read.labels(name).inc(page.changes_read)
            self.metrics.set_feed(name, page.cursor, page.head)
            self.beat()
            if page.done:
                break
        return marked

    def _notified(self, name: str, source: Notifications) -> int:
        """Take every notification waiting: its studies marked (committed) before it is
        acknowledged, so a crash in between only brings it again."""
        marked = 0
        for _ in range(MAX_STEPS):
            if self.stop.is_set():
                break
            notified = source.notifications(self.page_size)
            if not notified.receipt:
                break
            marks, skipped = _usable(notified.marks, notified.skipped)
            marked += self.state.record_notified(name, marks, skipped)
            self._skipped(name, skipped)
            source.acknowledge(notified)
            self.totals["changes"] += len(notified.receipt)
            self.metrics.changes_read.labels(name).inc(len(notified.receipt))
        self.beat()
        return marked

    def check(self, name: str) -> None:
        """For readiness: raise while this source's feed keeps failing, or is stopped."""
        if name in self.unusable:
            raise FeedFailing(f"the change feed stopped: {self.unusable[name]}")
        count = self.failures.get(name, 0)
        if count >= FAILING_AFTER:
            raise FeedFailing(f"the change feed failed {count} times in a row at one position")

    def _unusable(self, name: str, reason: str) -> None:
        """The feed cannot start from what the state DB holds: stopped, and said so (once
        in the log; in /readyz, the metric and `status` until it reads again)."""
        self.metrics.feed_failing.labels(name).set(1)
        if self.unusable.get(name) != reason:
            self.unusable[name] = reason
            self.state.record_feed_error(name, reason)
            log.error("the change feed stopped: %s", reason, extra={"source": name})

    def _page_read(self, name: str) -> None:
        if self.unusable.pop(name, None) is not None:
            self.state.record_feed_error(name, None)
            self.metrics.feed_failing.labels(name).set(0)
        if self.failures.pop(name, 0):
            self.metrics.feed_failing.labels(name).set(0)
            log.warning("the change feed reads again", extra={"source": name})

    def _page_failed(
        self, name: str, source: FeedSource, cursor: str | None, exc: Exception
    ) -> bool:
        """Count a page's own failure; True when the entry at `cursor` was stepped past."""
        count = self.failures[name] = self.failures.get(name, 0) + 1
        self.metrics.feed_failing.labels(name).set(1 if count >= FAILING_AFTER else 0)
        log.warning(
            "reading the change feed failed (%d in a row): %s",
            count,
            exc,
            extra={"source": name, "cursor": cursor},
        )
        if count <= FAILING_AFTER:
            return False  # again next poll; then one entry at a time
        source.check()  # the server is down after all? Then it is an outage, not the entry
        after = source.next_position(cursor)
        skipped = Skipped(after, f"the entry could not be read: {failure_class(exc)}")
        self.state.record_skip(name, after, skipped)
        self._skipped(name, [skipped])
        return True

    def _skipped(self, name: str, skipped: list[Skipped]) -> None:
        if not skipped:
            return
        self.metrics.feed_skipped.labels(name).inc(len(skipped))
        for entry in skipped:
            log.warning(
                "skipped a change-feed entry: %s",
                entry.reason,
                extra={"source": name, "position": entry.position},
            )

    def scan(self, name: str) -> int:
        """Mark the studies that vanished, changed instance count, or were never seen (only
        for a source whose feed does not log deletes); how many were marked. A study missing
        from a listing counts as vanished only where the listing speaks for it (`covers`)."""
        source = self.sources[name]
        if not isinstance(source, StudyListing):  # its feed logs deletions
            return 0
        present = source.list_studies()
        identities = source.identities if isinstance(source, ListsIdentities) else {}
        known = self.state.known_studies(name)
        now = time.time()
        # A held deletion waits for an operator, a rejected one (kept) for the study to
        # come back: neither is "vanished" again.
        marks = [
            DirtyMark(key, now)
            for key, k in known.items()
            if key not in present and source.covers(key) and k.status not in ("held", "kept")
        ]
        marks += [
            DirtyMark(key, now, count=n, identity=identities.get(key))
            for key, n in present.items()
            if _changed(known.get(key), n, identities.get(key))
        ]
        # A study synced moments ago may still be marked with an older count; re-syncing
        # it is a cheap no-op (content hash), so no special case is needed.
        # Where the listing is the change feed (a PACS polled by C-FIND) a study it finds is
        # news, and goes ahead of a backfill; a reconcile scan only fills gaps.
        self.state.mark_dirty(name, marks, now, lift=listing_is_feed(source))
        if marks:
            log.info(
                "reconcile found %d studies to sync",
                len(marks),
                extra={"source": name, "count": len(marks)},
            )
        return len(marks)


def _changed(known: KnownStudy | None, count: int, identity: str | None = None) -> bool:
    """Whether a listed study needs a sync: never seen, back after a held or rejected
    deletion, another count than last synced, or (where the listing shows it) another
    patient identity than last listed: a correction in place keeps the count. A failed
    study is retried when its identity changes, not when it is first listed with one.
    A negative count means the source cannot
    say (a PACS without the count in C-FIND); `UNCOUNTED`, that it keeps no counts at all
    (HealthImaging): only unseen studies are marked then. A failed study stays parked until
    its count differs from the one seen when it failed (never on an unknown count): a
    study that fails the same way each time must not be tried again at every poll."""
    if known is None or known.status in ("held", "kept"):
        return True
    if count == UNCOUNTED:
        return False
    corrected = identity is not None and known.identity != identity
    if corrected and (known.status != "failed" or known.identity is not None):
        return True
    if known.status == "failed":
        return count >= 0 and known.seen_count is not None and known.seen_count != count
    return count < 0 or known.count != count


def per_source(
    names: Iterable[str],
    work: Callable[[str], int],
    pauses: Pauses,
    *,
    strict: bool,
    failed: dict[str, Exception] | None,
) -> int:
    """Run `work` on each named source, summing what it returns. With `strict`, a failing
    source's error is raised; without, that source is paused (an outage) or logged, recorded
    in `failed` (and skipped from then on), and the others go on. A state DB failure is
    always raised: it is nobody's source's."""
    total = 0
    for name in names:
        if failed is not None and name in failed:
            continue
        pause = pauses[source_dependency(name)]
        started = time.time()
        try:
            total += work(name)
        except StateUnavailable:
            raise
        except RetriableError as exc:
            if strict:
                raise
            if exc.outage:
                pause.trip(str(exc), exc.retry_after, kind=failure_class(exc))
            else:
                log.warning("reading the source failed: %s", exc, extra={"source": name})
            if failed is not None:
                failed[name] = exc
        else:
            pause.clear(sent_at=started)
    return total
