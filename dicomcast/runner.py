"""Running the worker for good: its jobs on schedules, signals, and a bounded stop.

A second signal, or in-flight studies outlasting `shutdown_timeout`, exits at once: every
record is one DB transaction, so an abrupt exit only means re-syncing.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from dicomcast.errors import DicomcastError

if TYPE_CHECKING:
    from dicomcast.worker import Worker

log = logging.getLogger(__name__)


def run_forever(worker: Worker, on_ready: Callable[[], None] | None = None) -> None:
    """Run the worker's jobs until its stop event is set (SIGTERM/SIGINT set it)."""
    scheduler = BackgroundScheduler(
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
    )
    jobs: list[tuple[Callable[[], object], float]] = [
        (worker.cycle, worker.tick),
        (worker.scan, worker.settings.reconcile_interval),
        (worker.hold_source, worker.leases.seconds / 3),
    ]
    now = dt.datetime.now(dt.UTC)
    for job, seconds in jobs:
        scheduler.add_job(_guarded(job), "interval", seconds=seconds, next_run_time=now)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: _on_signal(worker, signum))
    scheduler.start()
    names = list(worker.sources)
    log.info("worker running", extra={"sources": names, "owner": worker.owner})
    if on_ready:
        on_ready()
    try:
        worker.stop_event.wait()
    finally:
        log.info("stopping: finishing the studies in flight")
        closer = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True})
        closer.start()
        closer.join(worker.settings.shutdown_timeout)
        worker.leases.let_go()
        if closer.is_alive():
            _exit_now(
                worker,
                f"studies still in flight after {worker.settings.shutdown_timeout:g} s; "
                "exiting without them (they will be synced again)",
            )
        log.info("stopped", extra={"sources": names})


def _on_signal(worker: Worker, signum: int) -> None:
    if worker.stop_event.is_set():
        _exit_now(worker, f"second {signal.Signals(signum).name}: exiting at once")
    worker.stop_event.set()


def _exit_now(worker: Worker, reason: str) -> None:
    try:
        log.error(reason)
        for handler in logging.getLogger().handlers:
            handler.flush()
    finally:  # nothing, not even a broken log stream, may keep the process alive
        worker.hard_exit(1)


def _guarded(job: Callable[[], object]) -> Callable[[], None]:
    """A scheduled job logs its failure and lets the next run try again."""

    def run() -> None:
        try:
            job()
        except DicomcastError as exc:
            log.warning("%s failed: %s", job.__name__, exc)
        except Exception:
            log.exception("%s failed unexpectedly", job.__name__)

    return run
