"""Source -> dirty set: tail each source's change feed, and scan the sources whose feed
does not log deletions for studies that vanished or changed size without an entry.

Each feed page is recorded with its cursor in one transaction (`record_page`), so a crash
replays at most a page and loses nothing. The feed only says *which* studies changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from dicomcast.errors import RetriableError, StateUnavailable, failure_class
from dicomcast.model import DirtyMark, source_dependency
from dicomcast.ops.metrics import Metrics
from dicomcast.sources.base import Source
from dicomcast.sync.pauses import Pauses

log = logging.getLogger(__name__)


class FeedState(Protocol):
    """The part of the state DB the feed writes: cursors and dirty marks."""

    def cursor(self, name: str) -> str | None: ...

    def record_page(
        self, source: str, cursor: str, feed_head: str | None, marks: Iterable[DirtyMark]
    ) -> int: ...

    def reset_cursor(self, source: str, cursor: str | None) -> None: ...

    def known_studies(self, source: str) -> dict[str, int | None]: ...

    def mark_dirty(
        self, source: str, marks: Iterable[DirtyMark], now: float | None = None
    ) -> int: ...


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

    def tail(self, name: str) -> int:
        """Read one source's feed to its end (or until stopped); how many studies were
        marked dirty."""
        source = self.sources[name]
        marked = 0
        while not self.stop.is_set():
            page = source.read_changes(self.state.cursor(name), self.page_size)
            if page.reset:
                self.state.reset_cursor(name, page.cursor)
                self.scan(name)
                continue
            marked += self.state.record_page(name, page.cursor, page.head, page.marks)
            self.totals["changes"] += page.changes_read
            self.metrics.changes_read.labels(name).inc(page.changes_read)
            self.metrics.set_feed(name, page.cursor, page.head)
            self.beat()
            if page.done:
                break
        return marked

    def scan(self, name: str) -> int:
        """Mark the studies that vanished, changed instance count, or were never seen (only
        for a source whose feed does not log deletes); how many were marked."""
        source = self.sources[name]
        if source.logs_deletes:
            return 0
        present = source.list_studies()
        known = self.state.known_studies(name)
        now = time.time()
        marks = [DirtyMark(key, now) for key in known if key not in present]
        marks += [DirtyMark(key, now) for key, n in present.items() if known.get(key, -1) != n]
        # A study synced moments ago may still be marked with an older count; re-syncing
        # it is a cheap no-op (content hash), so no special case is needed.
        self.state.mark_dirty(name, marks, now)
        if marks:
            log.info(
                "reconcile found %d studies to sync",
                len(marks),
                extra={"source": name, "count": len(marks)},
            )
        return len(marks)


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
            pause.clear()
    return total
