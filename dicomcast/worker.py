"""The reconciler: tail the feed into the dirty set, sync dirty studies, scan for deletions.

Three loops share the state DB and nothing else:
- `tail()` reads the change feed and records each page (studies dirty + cursor) atomically;
- `sync_round()` claims due dirty studies and syncs each from the source's CURRENT state,
  concurrently, so event order, duplicates and coalescing take care of themselves;
- `reconcile()` lists the source's studies and dirties the ones that vanished or changed
  size without a feed entry (Orthanc logs no deletes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from dicomcast.app import App, mapping_config
from dicomcast.errors import DicomcastError, RetriableError, StudyError
from dicomcast.state.store import DirtyMark, StudyTask, SyncOutcome

log = logging.getLogger(__name__)
CLAIM_LEASE = 300.0


@dataclass
class RoundStats:
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def attempted(self) -> int:
        return sum(self.outcomes.values())


def content_hash(*parts: Any) -> str:
    return hashlib.sha256(
        json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode()
    ).hexdigest()


class Worker:
    def __init__(self, app: App, *, owner: str | None = None) -> None:
        self.app = app
        self.settings = app.settings
        self.source = app.source
        self.store = app.store
        self.owner = owner or app.settings.worker_id
        self.config = mapping_config(app.settings)
        self.endpoint_ref: str | None = None
        self.stop_event = threading.Event()
        self.totals: Counter[str] = Counter()
        self._current_uid = threading.local()  # the study UID being synced, for log lines
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.concurrency, thread_name_prefix="sync"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    # --- start-up

    def prepare(self) -> None:
        """Register the source and make sure its Endpoint exists on the FHIR server."""
        self.store.ensure_source(self.source.name, self.source.kind)
        released = self.store.release_claims(self.source.name, self.owner)
        if released:
            log.warning(
                "took back %d studies an earlier run of this worker left claimed",
                released,
                extra={"source": self.source.name, "count": released},
            )
        self._ensure_endpoint()

    def _ensure_endpoint(self) -> str:
        """The source's Endpoint reference, found or created once per worker."""
        if self.endpoint_ref is None:
            endpoint = self.app.mappings.map_endpoint(self.config)
            self.endpoint_ref = self.app.writer.ensure_endpoint(endpoint)
            log.info(
                "endpoint ready", extra={"source": self.source.name, "endpoint": self.endpoint_ref}
            )
        return self.endpoint_ref

    # --- the feed

    def tail(self) -> int:
        """Read the feed to its end (or until stopped); returns how many studies were dirtied."""
        marked = 0
        while not self.stop_event.is_set():
            state = self.store.get_source(self.source.name)
            cursor = state.cursor if state else None
            page = self.source.read_changes(cursor, self.settings.feed_page_size)
            if page.reset:
                self.store.reset_cursor(self.source.name, page.cursor)
                self.reconcile()
                continue
            marked += self.store.record_page(self.source.name, page.cursor, page.head, page.marks)
            self.totals["changes"] += page.changes_read
            if page.done:
                break
        return marked

    def reconcile(self) -> int:
        """Dirty studies that vanished, changed instance count, or were never seen."""
        present = self.source.list_studies()
        known = self.store.known_studies(self.source.name)
        now = time.time()
        marks = [DirtyMark(key, now) for key in known if key not in present]
        marks += [DirtyMark(key, now) for key, n in present.items() if known.get(key, -1) != n]
        # A study synced moments ago may still be marked with an older count; re-syncing it
        # is a cheap no-op (content hash), so no special case is needed.
        self.store.mark_dirty(self.source.name, marks, now)
        if marks:
            log.info(
                "reconcile found %d studies to sync",
                len(marks),
                extra={"source": self.source.name, "count": len(marks)},
            )
        return len(marks)

    # --- syncing

    def sync_round(self, *, wait_for_stable: bool) -> RoundStats:
        """Sync every study that is due now, `concurrency` at a time."""
        stats = RoundStats()
        tasks = self.store.due(self.source.name, limit=self.settings.concurrency * 8)
        claimed = [t for t in tasks if self.store.claim(t, self.owner, CLAIM_LEASE)]
        for outcome in self._pool.map(lambda t: self.sync_one(t, wait_for_stable), claimed):
            stats.outcomes[outcome] += 1
            self.totals[outcome] += 1
        return stats

    def sync_one(self, task: StudyTask, wait_for_stable: bool = False) -> str:
        """Bring one study's FHIR state in line with the source; never raises."""
        started = time.monotonic()
        self._current_uid.value = task.study_uid
        try:
            outcome = self._sync(task, wait_for_stable)
        except StudyError as exc:
            self.store.finish_failed(
                task, str(exc) + _outcome_suffix(exc), type(exc).__name__, park=True, retry_at=None
            )
            outcome = "failed"
            log.warning("study refused: %s", exc, extra=self._extra(task, outcome))
        except RetriableError as exc:
            outcome = self._backoff(task, exc)
        except Exception as exc:
            self.store.finish_failed(
                task,
                f"internal error: {type(exc).__name__}: {exc}",
                "InternalError",
                park=True,
                retry_at=None,
            )
            outcome = "failed"
            log.exception("internal error syncing a study", extra=self._extra(task, outcome))
        log.info(
            "study %s",
            outcome,
            extra={**self._extra(task, outcome), "ms": round((time.monotonic() - started) * 1000)},
        )
        return outcome

    def _extra(self, task: StudyTask, outcome: str) -> dict[str, Any]:
        return {
            "source": task.source,
            "study_key": task.study_key,
            "study_uid": getattr(self._current_uid, "value", None) or task.study_uid,
            "outcome": outcome,
        }

    def _backoff(self, task: StudyTask, exc: RetriableError) -> str:
        attempts = task.attempts + 1
        if attempts >= self.settings.max_attempts:
            self.store.finish_failed(task, str(exc), type(exc).__name__, park=True, retry_at=None)
            log.warning(
                "study parked after %d attempts: %s",
                attempts,
                exc,
                extra=self._extra(task, "failed"),
            )
            return "failed"
        delay = min(self.settings.backoff_max, self.settings.backoff_base * 2 ** (attempts - 1))
        delay = max(delay * random.uniform(0.8, 1.2), exc.retry_after or 0.0)  # noqa: S311
        self.store.finish_failed(
            task, str(exc), type(exc).__name__, park=False, retry_at=time.time() + delay
        )
        log.info(
            "study will be retried in %.0f s: %s", delay, exc, extra=self._extra(task, "retry")
        )
        return "retry"

    def _sync(self, task: StudyTask, wait_for_stable: bool) -> str:
        fetched = self.source.fetch_study(task.study_key)
        study_uid = fetched.study_uid or task.study_uid
        self._current_uid.value = study_uid
        if fetched.view is None:
            if study_uid and task.fhir_imagingstudy_id:
                self.app.writer.remove_study(study_uid)
            self.store.finish_gone(task)
            return "deleted"
        view = fetched.view
        if wait_for_stable and not fetched.stable:
            waited = time.time() - (task.dirty_since or time.time())
            if waited < self.settings.stable_wait_max:
                self.store.release(task, not_before=time.time() + self.settings.poll_interval)
                return "deferred"
        # Never prepare() here: it frees this worker's claims, including studies in flight.
        mapped = self.app.mappings.map_study(view, self.config, self._ensure_endpoint())
        digest = content_hash(mapped.patient, mapped.imaging_study, self.settings.patient_policy)
        patient_id: str | None
        study_id: str | None
        if digest == task.content_hash and task.fhir_imagingstudy_id:
            patient_id, study_id, outcome = (
                task.fhir_patient_id,
                task.fhir_imagingstudy_id,
                "unchanged",
            )
        else:
            result = self.app.writer.upsert_study(mapped)
            patient_id, study_id = result.patient_id, result.imaging_study_id
            outcome = "synced" if result.wrote else "unchanged"
        warnings = tuple(fetched.warnings) + mapped.warnings
        self.store.finish_clean(
            task,
            SyncOutcome(view.uid, digest, patient_id, study_id, view.instance_count, warnings),
        )
        return outcome

    # --- running

    def run_once(self, progress: Callable[[RoundStats], None] | None = None) -> int:
        """Drain the feed and every due study, then return an exit code (0 = all clean)."""
        self.prepare()
        self.tail()
        self.reconcile()
        while not self.stop_event.is_set():
            stats = self.sync_round(wait_for_stable=False)
            if progress:
                progress(stats)
            # Nothing was due: stop once the feed, read again, names nothing new either.
            if stats.attempted == 0 and self.tail() == 0:
                break
        counts = self.store.counts(self.source.name)
        left = counts.get("failed", 0) + counts.get("dirty", 0)
        return 1 if left else 0

    def run_forever(self) -> None:
        """The long-running worker: poll, sync, and scan on schedules until SIGTERM/SIGINT."""
        self.prepare()
        scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        scheduler.add_job(
            self._guarded(self._cycle),
            "interval",
            seconds=self.settings.poll_interval,
            id="cycle",
            next_run_time=_now(),
        )
        scheduler.add_job(
            self._guarded(self.reconcile),
            "interval",
            seconds=self.settings.reconcile_interval,
            id="reconcile",
            next_run_time=_now(),
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        scheduler.start()
        log.info("worker running", extra={"source": self.source.name, "owner": self.owner})
        try:
            self.stop_event.wait()
        finally:
            log.info("stopping: finishing the studies in flight")
            scheduler.shutdown(wait=True)

    def _cycle(self) -> None:
        self.tail()
        while not self.stop_event.is_set():
            if self.sync_round(wait_for_stable=True).attempted == 0:
                break

    def _guarded(self, job: Callable[[], object]) -> Callable[[], None]:
        """A scheduled job logs its failure and lets the next run try again."""

        def run() -> None:
            try:
                job()
            except DicomcastError as exc:
                log.warning("%s failed: %s", job.__name__, exc, extra={"source": self.source.name})
            except Exception:
                log.exception("%s failed unexpectedly", job.__name__)

        return run


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _outcome_suffix(exc: Exception) -> str:
    outcome = getattr(exc, "outcome", "")
    return f" — {outcome}" if outcome else ""
