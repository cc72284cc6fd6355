"""Running the worker: once (a backfill that drains and exits), or for good (jobs on
schedules, signals, a bounded stop).

For good, an outage never ends the process: start-up work (registering sources, finding
the Endpoints) waits under the same pauses as everything else, while `/readyz` says why.
A second signal, or in-flight studies outlasting `shutdown_timeout`, exits at once: every
record is one DB transaction, so an abrupt exit only means re-syncing.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Protocol

from dicomcast.errors import DicomcastError, RetriableError, StateUnavailable, failure_class
from dicomcast.model import RoundStats
from dicomcast.sync.feed import per_source

if TYPE_CHECKING:
    from dicomcast.config import Settings
    from dicomcast.model import StudyLocation
    from dicomcast.ops.metrics import Metrics
    from dicomcast.parts import App
    from dicomcast.sources.base import Source
    from dicomcast.state.store import StateStore
    from dicomcast.sync.endpoints import Endpoints
    from dicomcast.sync.feed import Feed
    from dicomcast.sync.leases import SourceLeases
    from dicomcast.sync.pauses import Pause, Pauses
    from dicomcast.sync.reconcile import Reconciler
    from dicomcast.sync.verify import Verifier


class Worker(Protocol):
    """What the runner drives: `dicomcast.worker.Worker`, as seen from here (the worker
    calls the runner; the runner names only this, so the two do not import each other)."""

    app: App
    settings: Settings
    sources: dict[str, Source]
    store: StateStore
    metrics: Metrics
    owner: str
    stop_event: threading.Event
    pauses: Pauses
    leases: SourceLeases
    feed: Feed
    endpoints: Endpoints
    reconciler: Reconciler
    hard_exit: Callable[[int], object]
    tailed_at: float  # monotonic time of the last feed read in the loop

    @property
    def tailing(self) -> dict[str, bool]: ...

    @property
    def tick(self) -> float: ...

    def prepare(self) -> None: ...

    def beat(self) -> None: ...

    def tail(self, *, strict: bool = True, failed: dict[str, Exception] | None = None) -> int: ...

    def follow_backfills(self) -> None: ...

    def hold_source(self) -> bool: ...

    def source_pause(self, name: str) -> Pause: ...

    def paused_until(self, source: str | None = None) -> float | None: ...

    def sync_round(self, *, wait_for_stable: bool, skip: Collection[str] = ()) -> RoundStats: ...

    def counts(self) -> Counter[str]: ...


log = logging.getLogger(__name__)


def run_once(worker: Worker, progress: Callable[[RoundStats], None] | None = None) -> int:
    """Drain the feed and every due study, then return an exit code (0 = all clean; a
    failed, waiting or held study is 1).

    Retries and pauses due within `once_max_wait` seconds are waited for, so a short blip
    does not end a backfill early; longer ones are left for the next run. With several
    sources, one whose feed cannot be read is left out and the others are synced; its
    error is raised at the end."""
    worker.prepare()
    strict = len(worker.sources) == 1
    failed: dict[str, Exception] = {}
    try:
        worker.tail(strict=strict, failed=failed)
        per_source(worker.sources, worker.feed.scan, worker.pauses, strict=strict, failed=failed)
        worker.follow_backfills()
        while not worker.stop_event.is_set():
            stats = worker.sync_round(wait_for_stable=False, skip=failed)
            if progress:
                progress(stats)
            if stats.attempted or worker.tail(strict=strict, failed=failed):
                continue
            wake = _next_wake(worker, skip=failed)
            if wake is None or wake - time.time() > worker.settings.once_max_wait:
                break
            worker.stop_event.wait(max(0.05, wake - time.time()))
    finally:
        worker.leases.let_go()
    for name, error in failed.items():
        log.error("source %s could not be read: %s", name, error, extra={"source": name})
    if failed:
        raise next(iter(failed.values()))
    if worker.feed.unusable:  # said in the log as it stopped; not "all clean"
        return 1
    counts = worker.counts()
    return 1 if counts.get("failed", 0) + counts.get("dirty", 0) + counts.get("held", 0) else 0


def _next_wake(worker: Worker, skip: Collection[str] = ()) -> float | None:
    wakes = []
    for name in worker.sources:
        due = None if name in skip else worker.store.next_due(name)
        if due is not None:
            wakes.append(max(due, worker.paused_until(name) or 0.0))
    return min(wakes) if wakes else None


def cycle(worker: Worker) -> None:
    """The loop's job, every tick: when a poll is due, check the state DB is the one we
    started with and read the feeds; then sync every due study until none is left, going
    back to the feeds every `poll_interval` while a backlog or a backfill lasts."""
    worker.beat()
    poll_if_due(worker)
    while not worker.stop_event.is_set():
        if worker.sync_round(wait_for_stable=True).attempted == 0:
            break
        poll_if_due(worker)


def poll_if_due(worker: Worker) -> None:
    now = time.monotonic()
    if now - worker.tailed_at < worker.settings.poll_interval - worker.tick / 2:
        return
    worker.tailed_at = now
    try:
        # A deleted, replaced or corrupted state DB pauses everything until it is back.
        worker.store.ping()
        worker.follow_backfills()
        if any(worker.tailing.values()):
            worker.tail(strict=False)
    except StateUnavailable as exc:
        worker.pauses["state"].trip(str(exc), exc.retry_after, kind=failure_class(exc))


def scan(worker: Worker) -> None:
    """The periodic scan for deletions, of the sources this worker tails."""
    for name in worker.sources:
        if worker.tailing[name] and not worker.source_pause(name).active():
            worker.feed.scan(name)


def verifier(worker: Worker, name: str) -> Verifier:
    """The drift check of one source, with the worker's mappings, writer and Endpoints."""
    from dicomcast.sync.verify import Verifier

    def endpoint_of(location: StudyLocation) -> str | None:
        return worker.endpoints.ref(name, location)

    app = worker.app
    return Verifier(
        name, app.sources[name], app.mappings, app.writer, worker.reconciler.configs, endpoint_of
    )


def verify(worker: Worker) -> None:
    """The periodic verify of the sources this worker tails: drift by kind, as gauges."""
    from dicomcast.model import DateSpan
    from dicomcast.sync.verify import DriftKind

    for name in worker.sources:
        if not worker.tailing[name] or worker.source_pause(name).active():
            continue
        counts = Counter(d.kind for d in verifier(worker, name).run(DateSpan()))
        for kind in DriftKind:
            worker.metrics.drift.labels(name, str(kind)).set(counts.get(kind, 0))
        if counts:
            log.warning(
                "verify found studies out of sync: %s",
                ", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
                extra={"source": name},
            )


def start(worker: Worker) -> bool:
    """Start-up work, waited out under the pauses while a server is down (the listener is
    up meanwhile, `/readyz` says what is awaited). False when stopped first."""
    while not worker.stop_event.is_set():
        try:
            worker.prepare()
            return True
        except RetriableError as exc:
            which = "state" if isinstance(exc, StateUnavailable) else "fhir"
            until = worker.pauses[which].trip(str(exc), exc.retry_after, kind=failure_class(exc))
            log.warning("start-up waits for %s: %s", which, exc, extra={"dependency": which})
            worker.beat()  # waiting is not hanging: /livez stays up
            worker.stop_event.wait(max(0.05, min(until - time.time(), 10.0)))
    return False


def run_forever(worker: Worker, on_ready: Callable[[], None] | None = None) -> None:
    """Run the worker's jobs until its stop event is set (SIGTERM/SIGINT set it)."""
    if threading.current_thread() is threading.main_thread():
        received: list[int] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: _on_signal(received, signum, worker))
        threading.Thread(
            target=_watch_signals, args=(received, worker), name="signals", daemon=True
        ).start()
    if not start(worker):
        return
    from apscheduler.schedulers.background import BackgroundScheduler  # only for good

    for listener in worker.app.listeners:
        listener.start()  # pushed instances are stored and marked dirty from now on
    scheduler = BackgroundScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
    )
    jobs: list[tuple[str, Callable[[], object], float]] = [
        ("cycle", lambda: cycle(worker), worker.tick),
        ("scan", lambda: scan(worker), worker.settings.reconcile_interval),
        ("hold_source", worker.hold_source, worker.leases.seconds / 3),
    ]
    now = dt.datetime.now(dt.UTC)
    for name, job, seconds in jobs:
        scheduler.add_job(_guarded(name, job), "interval", seconds=seconds, next_run_time=now)
    every = worker.settings.verify_interval
    if every:
        first = now + dt.timedelta(seconds=every)
        scheduler.add_job(
            _guarded("verify", lambda: verify(worker)),
            "interval",
            seconds=every,
            next_run_time=first,
        )
    scheduler.start()
    names = list(worker.sources)
    log.info("worker running", extra={"sources": names, "owner": worker.owner})
    if on_ready:
        on_ready()
    try:
        # Timed, so that the main thread runs a signal's handler within half a second
        # even if the kernel handed the signal to another thread.
        while not worker.stop_event.wait(0.5):
            pass
    finally:
        log.info("stopping: finishing the studies in flight")
        closer = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True})
        closer.start()
        closer.join(worker.settings.shutdown_timeout)
        for listener in worker.app.listeners:
            listener.stop()
        worker.leases.let_go()
        if closer.is_alive():
            _exit_now(
                worker,
                f"studies still in flight after {worker.settings.shutdown_timeout:g} s; "
                "exiting without them (they will be synced again)",
            )
        log.info("stopped", extra={"sources": names})


def _on_signal(received: list[int], signum: int, worker: Worker) -> None:
    """Only note the signal: a handler runs inside whatever the main thread was doing, and
    one that takes a lock the main thread holds (`Event.set` takes the event's) never
    returns. A worker once ignored SIGTERM for good under load. `_watch_signals` acts."""
    if received:
        _exit_now(worker, f"second {signal.Signals(signum).name}: exiting at once")
    received.append(signum)


def _watch_signals(received: list[int], worker: Worker) -> None:
    """Turn a noted signal into the stop event, from a thread of its own."""
    while not worker.stop_event.wait(0.2):
        if received:
            worker.stop_event.set()


def _exit_now(worker: Worker, reason: str) -> None:
    try:
        log.error(reason)
        for handler in logging.getLogger().handlers:
            handler.flush()
    finally:  # nothing, not even a broken log stream, may keep the process alive
        worker.hard_exit(1)


def _guarded(name: str, job: Callable[[], object]) -> Callable[[], None]:
    """A scheduled job logs its failure and lets the next run try again."""

    def run() -> None:
        try:
            job()
        except DicomcastError as exc:
            log.warning("%s failed: %s", name, exc)
        except Exception:
            log.exception("%s failed unexpectedly", name)

    return run
