"""The reconciler: tail the feed into the dirty set, sync dirty studies, scan for deletions.

Three loops share the state DB and nothing else:
- `tail()` reads the change feed and records each page (studies dirty + cursor) atomically;
- `sync_round()` claims due dirty studies and syncs each from the source's CURRENT state,
  concurrently, so event order, duplicates and coalescing take care of themselves;
- `reconcile()` lists the source's studies and dirties the ones that vanished or changed
  size without a feed entry (Orthanc logs no deletes).

Failures are sorted by whose they are. A study's own (a refusal, a 500 that repeats) costs
that study an attempt and backs it off alone. An outage (a server unreachable, throttling,
refusing our credentials; the state DB failing) is nobody's study's: it pauses all syncing
against that server, costs no attempts, and clears by itself when the server answers again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import random
import signal
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from dicomcast.app import App, mapping_config
from dicomcast.errors import (
    DicomcastError,
    FhirConflict,
    RetriableError,
    SourceUnavailable,
    StateUnavailable,
    StudyError,
)
from dicomcast.mapping.mapper import MappedStudy, content_hash, search_token, study_token
from dicomcast.mapping.union import Part, union
from dicomcast.ops.memory import release_free_memory
from dicomcast.sources.base import Source, StudyLocation, source_dependency
from dicomcast.state.store import Contribution, DirtyMark, StudyTask, SyncOutcome

log = logging.getLogger(__name__)
CLAIM_LEASE = 300.0
TICK = 0.5  # seconds between looks for due studies (the feed is polled less often)
SETTLED = frozenset({"synced", "unchanged", "deleted"})


@dataclass
class RoundStats:
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def attempted(self) -> int:
        return sum(self.outcomes.values())


class Pause:
    """A server-wide pause after an outage: exponential from `base` to `cap`, never shorter
    than the server's Retry-After. Studies that hit it wait without spending attempts."""

    def __init__(self, name: str, base: float, cap: float) -> None:
        self.name = name
        self.base = base
        self.cap = cap
        self.until = 0.0
        self.streak = 0
        self.reason: str | None = None
        self._lock = threading.Lock()

    def active(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) < self.until

    def trip(self, exc: Exception, now: float | None = None) -> float:
        """Pause (or extend the pause); returns when it ends. Several studies failing at
        once during one pause count as one step of the backoff."""
        now = time.time() if now is None else now
        with self._lock:
            if now >= self.until:
                self.streak += 1
            delay = min(self.cap, self.base * 2 ** (self.streak - 1))
            delay = max(delay * random.uniform(0.8, 1.2), getattr(exc, "retry_after", 0) or 0)  # noqa: S311
            first = self.reason is None
            self.until = max(self.until, now + delay)
            self.reason = str(exc)
        if first:
            log.warning(
                "%s unavailable, pausing: %s", self.name, exc, extra={"dependency": self.name}
            )
        return self.until

    def clear(self) -> None:
        with self._lock:
            was = self.reason
            self.until, self.streak, self.reason = 0.0, 0, None
        if was is not None:
            log.warning("%s is back; resuming", self.name, extra={"dependency": self.name})


class Worker:
    def __init__(
        self,
        app: App,
        *,
        owner: str | None = None,
        hard_exit: Callable[[int], object] = os._exit,
    ) -> None:
        self.app = app
        self.hard_exit = hard_exit  # how a stop that cannot wait any longer ends the process
        self.settings = app.settings
        self.sources = app.sources
        self.store = app.store
        self.metrics = app.metrics
        self.owner = owner or app.settings.worker_id
        self.source_settings = {s.name: s for s in app.settings.source_list()}
        self.priority = {name: rank for rank, name in enumerate(self.sources)}
        # Several sources may hold parts of one study: keep each part, write their union.
        self.multi = len(self.sources) > 1
        # Two sources' copies of one study are two claims; they must not write at once (a
        # FHIR server's conditional create may not be atomic: two creates, two resources).
        self._study_locks = [threading.Lock() for _ in range(64)]
        self.endpoints: dict[str, str] = {}  # Endpoint address -> `Endpoint/{id}`
        self._endpoint_lock = threading.Lock()
        self._configs: dict[tuple[str, str], dict[str, Any]] = {}
        self.stop_event = threading.Event()
        self.totals: Counter[str] = Counter()
        self.progress_at = time.time()  # the loop's heartbeat, for /livez
        self._tailed_at = -1e9  # monotonic time of the last feed read in the loop
        self.tailing = dict.fromkeys(self.sources, False)  # sources whose lease we hold
        base, cap = min(self.settings.backoff_base, 5.0), self.settings.backoff_max
        names = ["fhir", "state", *(source_dependency(name) for name in self.sources)]
        self.pauses = {name: Pause(name, base, cap) for name in names}
        self._unrecorded: list[StudyTask] = []  # claims the state DB failed to release
        self._current_uid = threading.local()  # the study UID being synced, for log lines
        self._pool = ThreadPoolExecutor(
            max_workers=self.settings.concurrency, thread_name_prefix="sync"
        )

    @property
    def source(self) -> Source:
        """The first source (the only one in a single-source setup)."""
        return self.app.source

    def source_pause(self, name: str) -> Pause:
        """The pause of one source: an outage there stops only that source's studies."""
        return self.pauses[source_dependency(name)]

    @property
    def source_lease(self) -> float:
        return max(30.0, 5 * self.settings.poll_interval)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def beat(self) -> None:
        self.progress_at = time.time()
        self.metrics.heartbeat.set(self.progress_at)

    def counts(self) -> Counter[str]:
        """Studies by status, over every source."""
        total: Counter[str] = Counter()
        for name in self.sources:
            total.update(self.store.counts(name))
        return total

    # --- start-up

    def prepare(self) -> None:
        """Register the sources, take back our stale claims, find or create the Endpoints."""
        for name, source in self.sources.items():
            self.store.ensure_source(name, source.kind)
            released = self.store.release_claims(name, self.owner)
            if released:
                log.warning(
                    "took back %d studies an earlier run of this worker left claimed",
                    released,
                    extra={"source": name, "count": released},
                )
        self.hold_source()
        for name, source in self.sources.items():
            location = source.default_location()
            if location is not None:
                self._endpoint(name, location)

    def hold_source(self) -> bool:
        """Take or renew the leases that make this worker the sources' one tailer; True
        when it tails at least one."""
        for name in self.sources:
            held = self.store.acquire_source(name, self.owner, self.source_lease)
            if held != self.tailing[name]:
                log.info(
                    "this worker %s the change feed",
                    "tails" if held else "does not tail (another worker holds it)",
                    extra={"source": name, "owner": self.owner},
                )
            self.tailing[name] = held
        return any(self.tailing.values())

    def _config(self, name: str, location: StudyLocation) -> dict[str, Any]:
        """The mapping config of one source's studies at one location (cached: few)."""
        key = (name, location.address)
        config = self._configs.get(key)
        if config is None:
            config = mapping_config(self.settings, self.source_settings.get(name), location)
            self._configs[key] = config
        return config

    def _endpoint(self, name: str, location: StudyLocation) -> str:
        """The Endpoint reference of a location, found or created once per worker."""
        ref = self.endpoints.get(location.address)
        if ref is None:
            with self._endpoint_lock:
                ref = self.endpoints.get(location.address)
                if ref is None:
                    endpoint = self.app.mappings.map_endpoint(self._config(name, location))
                    ref = self.app.writer.ensure_endpoint(endpoint)
                    self.endpoints[location.address] = ref
                    log.info("endpoint ready", extra={"source": name, "endpoint": ref})
        return ref

    # --- the feed

    def tail(self, *, strict: bool = True, failed: dict[str, Exception] | None = None) -> int:
        """Read every held source's feed to its end (or until stopped); returns how many
        studies were dirtied. Errors are handled as `_per_source` says."""
        held = [n for n in self.sources if self.tailing[n] and not self.source_pause(n).active()]
        return self._per_source(held, self._tail, strict=strict, failed=failed)

    def _per_source(
        self,
        names: list[str],
        work: Callable[[str, Source], int],
        *,
        strict: bool,
        failed: dict[str, Exception] | None,
    ) -> int:
        """Run `work` on each named source, summing what it returns. With `strict`, a
        failing source's error is raised; without, that source is paused (an outage) or
        logged, recorded in `failed` (and skipped from then on), and the others go on."""
        total = 0
        for name in names:
            if failed is not None and name in failed:
                continue
            try:
                total += work(name, self.sources[name])
            except StateUnavailable:
                raise
            except RetriableError as exc:
                if strict:
                    raise
                if exc.outage:
                    self.source_pause(name).trip(exc)
                else:
                    log.warning("reading the source failed: %s", exc, extra={"source": name})
                if failed is not None:
                    failed[name] = exc
            else:
                self.source_pause(name).clear()
        return total

    def _tail(self, name: str, source: Source) -> int:
        marked = 0
        while not self.stop_event.is_set():
            state = self.store.get_source(name)
            cursor = state.cursor if state else None
            page = source.read_changes(cursor, self.settings.feed_page_size)
            if page.reset:
                self.store.reset_cursor(name, page.cursor)
                if not source.logs_deletes:
                    self.reconcile(name)
                continue
            marked += self.store.record_page(name, page.cursor, page.head, page.marks)
            self.totals["changes"] += page.changes_read
            self.metrics.changes_read.labels(name).inc(page.changes_read)
            self.metrics.set_feed(name, page.cursor, page.head)
            self.beat()
            if page.done:
                break
        return marked

    def reconcile(self, only: str | None = None) -> int:
        """Dirty studies that vanished, changed instance count, or were never seen, in the
        sources whose feed does not log deletes."""
        found = 0
        for name, source in self.sources.items():
            if (only and name != only) or source.logs_deletes:
                continue
            present = source.list_studies()
            known = self.store.known_studies(name)
            now = time.time()
            marks = [DirtyMark(key, now) for key in known if key not in present]
            marks += [DirtyMark(key, now) for key, n in present.items() if known.get(key, -1) != n]
            # A study synced moments ago may still be marked with an older count; re-syncing
            # it is a cheap no-op (content hash), so no special case is needed.
            self.store.mark_dirty(name, marks, now)
            if marks:
                log.info(
                    "reconcile found %d studies to sync",
                    len(marks),
                    extra={"source": name, "count": len(marks)},
                )
            found += len(marks)
        return found

    # --- syncing

    def paused_until(self, source: str | None = None) -> float | None:
        """When the pause blocking syncs ends (the FHIR server's, the state DB's, and the
        given source's, or any source's without one); None when nothing is paused."""
        now = time.time()
        names = ["fhir", "state"]
        names += (
            [source_dependency(source)] if source else [source_dependency(n) for n in self.sources]
        )
        ends = [self.pauses[n].until for n in names if self.pauses[n].active(now)]
        return max(ends) if ends else None

    def sync_round(self, *, wait_for_stable: bool, skip: Collection[str] = ()) -> RoundStats:
        """Sync every study that is due now, `concurrency` at a time (none while the FHIR
        server or the state DB is paused; none of a paused source, nor of those in `skip`)."""
        stats = RoundStats()
        now = time.time()
        if self.pauses["fhir"].active(now) or self.pauses["state"].active(now):
            return stats
        self._release_unrecorded()
        limit = self.settings.concurrency * 16
        tasks = [
            task
            for name in self.sources
            if name not in skip and not self.source_pause(name).active(now)
            for task in self.store.due(name, limit=limit)
        ]
        claimed = self.store.claim_many(tasks, self.owner, CLAIM_LEASE)
        for outcome in self._pool.map(lambda t: self.sync_one(t, wait_for_stable), claimed):
            stats.outcomes[outcome] += 1
        if claimed:
            release_free_memory()
        return stats

    def sync_one(self, task: StudyTask, wait_for_stable: bool = False) -> str:
        """Bring one study's FHIR state in line with the source; never raises."""
        started = time.monotonic()
        self._current_uid.value = task.study_uid
        try:
            outcome = self._attempt(task, wait_for_stable)
        except StateUnavailable as exc:
            # Nothing about this study could be recorded; its claim is released once the
            # database answers again (or expires), and the next sync starts from scratch.
            self.pauses["state"].trip(exc)
            self._unrecorded.append(task)
            outcome = "retry"
            log.warning("state database failed: %s", exc, extra=self._extra(task, outcome))
        self.totals[outcome] += 1
        self.metrics.studies.labels(task.source, outcome).inc()
        if outcome in SETTLED:
            self.metrics.study_duration.labels(task.source).observe(time.monotonic() - started)
            if task.event_time:
                self.metrics.sync_lag.labels(task.source).observe(
                    max(0.0, time.time() - task.event_time)
                )
        self.beat()
        log.info(
            "study %s",
            outcome,
            extra={**self._extra(task, outcome), "ms": round((time.monotonic() - started) * 1000)},
        )
        return outcome

    def _attempt(self, task: StudyTask, wait_for_stable: bool) -> str:
        """One sync attempt with its failure recorded; only StateUnavailable escapes."""
        paused = self.paused_until(task.source)
        if self.stop_event.is_set() or paused is not None:
            self.store.release(task, not_before=paused)
            return "deferred"
        try:
            outcome = self._sync(task, wait_for_stable)
        except StudyError as exc:
            self.store.finish_failed(
                task,
                str(exc) + _outcome_suffix(exc),
                type(exc).__name__,
                park=True,
                retry_at=None,
                http_status=getattr(exc, "status", None),
            )
            log.warning("study refused: %s", exc, extra=self._extra(task, "failed"))
            return "failed"
        except StateUnavailable:
            raise
        except RetriableError as exc:
            return self._backoff(task, exc)
        except Exception as exc:
            self.store.finish_failed(
                task,
                f"internal error: {type(exc).__name__}: {exc}",
                "InternalError",
                park=True,
                retry_at=None,
            )
            log.exception("internal error syncing a study", extra=self._extra(task, "failed"))
            return "failed"
        return outcome

    def _release_unrecorded(self) -> None:
        while self._unrecorded:
            self.store.release(self._unrecorded[-1])
            self._unrecorded.pop()
        self.pauses["state"].clear()

    def _extra(self, task: StudyTask, outcome: str) -> dict[str, Any]:
        return {
            "source": task.source,
            "study_key": task.study_key,
            "study_uid": getattr(self._current_uid, "value", None) or task.study_uid,
            "outcome": outcome,
        }

    def _backoff(self, task: StudyTask, exc: RetriableError) -> str:
        status = exc.status
        if exc.outage:
            which = source_dependency(task.source) if isinstance(exc, SourceUnavailable) else "fhir"
            until = self.pauses[which].trip(exc)
            self.store.finish_failed(
                task,
                str(exc),
                type(exc).__name__,
                park=False,
                retry_at=until,
                http_status=status,
                count_attempt=False,
            )
            return "retry"
        attempts = task.attempts + 1
        if attempts >= self.settings.max_attempts:
            self.store.finish_failed(
                task, str(exc), type(exc).__name__, park=True, retry_at=None, http_status=status
            )
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
            task,
            str(exc),
            type(exc).__name__,
            park=False,
            retry_at=time.time() + delay,
            http_status=status,
        )
        log.info(
            "study will be retried in %.0f s: %s", delay, exc, extra=self._extra(task, "retry")
        )
        return "retry"

    def _sync(self, task: StudyTask, wait_for_stable: bool) -> str:
        source = self.sources[task.source]
        # While a study still receives instances, wait (up to stable_wait_max) instead of
        # writing a version per arrival; the Stable event makes it due again.
        waited = time.time() - (task.dirty_since or time.time())
        may_wait = wait_for_stable and waited < self.settings.stable_wait_max
        fetched = source.fetch_study(task.study_key, unless_unstable=may_wait)
        self.source_pause(task.source).clear()  # it answered
        study_uid = fetched.study_uid or task.study_uid
        self._current_uid.value = study_uid
        if fetched.unread:
            # Orthanc turns a study stable StableAge after its last instance, in steps of
            # about half a second; look again soon so the sync follows within a tick.
            self.store.release(task, not_before=time.time() + self.tick)
            return "deferred"
        location = source.location(task.study_key)
        if fetched.view is None:
            self._remove(task, study_uid, location)
            self.store.finish_gone(task)
            return "deleted"
        # Never prepare() here: it frees this worker's claims, including studies in flight.
        endpoint = self._endpoint(task.source, location)
        mapped = self.app.mappings.map_study(
            fetched.view, self._config(task.source, location), endpoint, scope=location.scope
        )
        uid, count = fetched.view.uid, fetched.view.instance_count
        warnings = tuple(fetched.warnings) + mapped.warnings
        del fetched  # a large study's metadata need not live through the write
        match = search_token(mapped.imaging_study)
        with self._study_lock(match):
            return self._write(task, mapped, match, uid, count, warnings, endpoint)

    def _study_lock(self, match: str) -> threading.Lock | contextlib.nullcontext[None]:
        """With several sources, one study's syncs from different sources take turns."""
        if not self.multi:
            return contextlib.nullcontext()
        return self._study_locks[zlib.crc32(match.encode()) % len(self._study_locks)]

    def _write(
        self,
        task: StudyTask,
        mapped: MappedStudy,
        match: str,
        uid: str,
        count: int,
        warnings: tuple[str, ...],
        endpoint: str,
    ) -> str:
        compose: Callable[[], dict[str, Any]] | None = None
        shared = False  # another source holds this study too: it exists, skip the blind create
        if self.multi:
            part = {
                "patient": mapped.patient,
                "study": mapped.imaging_study,
                "placeholder": mapped.patient_placeholder,
                "endpoint": endpoint,
            }
            self.store.put_contribution(task.source, task.study_key, match, part)
            subject = mapped.imaging_study.get("subject")

            def compose() -> dict[str, Any]:
                return self._union(match, subject)

            parts = self._parts(match)
            shared = len(parts) > 1
            mapped = replace(mapped, imaging_study=_union_of(parts, subject))
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
            never_written = task.fhir_imagingstudy_id is None and task.content_hash is None
            result = self.app.writer.upsert_study(
                mapped, new=never_written and not shared, compose=compose
            )
            self.pauses["fhir"].clear()  # it answered
            patient_id, study_id = result.patient_id, result.imaging_study_id
            outcome = "synced" if result.wrote else "unchanged"
        self.store.finish_clean(
            task, SyncOutcome(uid, digest, patient_id, study_id, count, warnings, match)
        )
        return outcome

    def _parts(self, match: str) -> list[Contribution]:
        """The configured sources' parts of a study, highest priority first."""
        parts = [c for c in self.store.contributions(match) if c.source in self.priority]
        return sorted(parts, key=lambda c: (self.priority[c.source], c.study_key))

    def _union(self, match: str, subject: Any) -> dict[str, Any]:
        return _union_of(self._parts(match), subject)

    def _remove(self, task: StudyTask, study_uid: str | None, location: StudyLocation) -> None:
        """Reflect a study gone from one source: with several sources, write what the
        others still hold of it; otherwise (or when none does) remove the ImagingStudy."""
        match = task.match_key or (study_token(study_uid, location.scope) if study_uid else None)
        if self.multi:
            match = self.store.drop_contribution(task.source, task.study_key) or match
            if match:
                with self._study_lock(match):
                    self._write_remaining(study_uid, match)
            return
        if match and task.fhir_imagingstudy_id:
            self.app.writer.remove_study(match)
            self.pauses["fhir"].clear()

    def _write_remaining(self, study_uid: str | None, match: str) -> None:
        """Write what the other sources still hold of a study, or remove it if none does."""
        parts = self._parts(match)
        if not parts:
            self.app.writer.remove_study(match)
            self.pauses["fhir"].clear()
            return
        first = parts[0].body
        subject = first["study"].get("subject")
        remaining = MappedStudy(
            study_uid or "",
            first["patient"],
            _union_of(parts, subject),
            first["placeholder"],
            (),
        )
        self.app.writer.upsert_study(remaining, compose=lambda: self._union(match, subject))
        self.pauses["fhir"].clear()

    # --- running

    def run_once(self, progress: Callable[[RoundStats], None] | None = None) -> int:
        """Drain the feed and every due study, then return an exit code (0 = all clean).

        Retries and pauses due within `once_max_wait` seconds are waited for, so a short
        blip does not end a backfill early; longer ones are left for the next run. With
        several sources, one whose feed cannot be read is left out and the others are
        synced; its error is raised at the end."""
        self.prepare()
        strict = not self.multi
        failed: dict[str, Exception] = {}
        try:
            self.tail(strict=strict, failed=failed)
            self._per_source(
                list(self.sources),
                lambda name, _source: self.reconcile(name),
                strict=strict,
                failed=failed,
            )
            while not self.stop_event.is_set():
                stats = self.sync_round(wait_for_stable=False, skip=failed)
                if progress:
                    progress(stats)
                if stats.attempted or self.tail(strict=strict, failed=failed):
                    continue
                wake = self._next_wake(skip=failed)
                if wake is None or wake - time.time() > self.settings.once_max_wait:
                    break
                self.stop_event.wait(max(0.05, wake - time.time()))
        finally:
            self._let_go()
        for name, error in failed.items():
            log.error("source %s could not be read: %s", name, error, extra={"source": name})
        if failed:
            raise next(iter(failed.values()))
        counts = self.counts()
        left = counts.get("failed", 0) + counts.get("dirty", 0)
        return 1 if left else 0

    def _next_wake(self, skip: Collection[str] = ()) -> float | None:
        wakes = []
        for name in self.sources:
            due = None if name in skip else self.store.next_due(name)
            if due is not None:
                wakes.append(max(due, self.paused_until(name) or 0.0))
        return min(wakes) if wakes else None

    def _let_go(self) -> None:
        """Hand the sources' leases back, so `cursor set` and other workers need not wait."""
        for name in self.sources:
            try:
                self.store.release_source(name, self.owner)
            except StateUnavailable as exc:
                log.warning("could not release the source lease: %s", exc, extra={"source": name})
            self.tailing[name] = False

    def run_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """The long-running worker: poll, sync, and scan on schedules until SIGTERM/SIGINT.

        A second signal, or in-flight studies outlasting `shutdown_timeout`, exits at once:
        every record is one DB transaction, so an abrupt exit only means re-syncing."""
        self.prepare()
        scheduler = BackgroundScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        jobs: list[tuple[Callable[[], object], float]] = [
            (self._cycle, self.tick),
            (self._reconcile_job, self.settings.reconcile_interval),
            (self.hold_source, self.source_lease / 3),
        ]
        for job, seconds in jobs:
            scheduler.add_job(self._guarded(job), "interval", seconds=seconds, next_run_time=_now())
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        scheduler.start()
        log.info("worker running", extra={"sources": list(self.sources), "owner": self.owner})
        if on_ready:
            on_ready()
        try:
            self.stop_event.wait()
        finally:
            log.info("stopping: finishing the studies in flight")
            closer = threading.Thread(target=scheduler.shutdown, kwargs={"wait": True})
            closer.start()
            closer.join(self.settings.shutdown_timeout)
            self._let_go()
            if closer.is_alive():
                self._exit_now(
                    f"studies still in flight after {self.settings.shutdown_timeout:g} s; "
                    "exiting without them (they will be synced again)"
                )
            log.info("stopped", extra={"sources": list(self.sources)})

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stop_event.is_set():
            self._exit_now(f"second {signal.Signals(signum).name}: exiting at once")
        self.stop_event.set()

    def _exit_now(self, reason: str) -> None:
        try:
            log.error(reason)
            for handler in logging.getLogger().handlers:
                handler.flush()
        finally:  # nothing, not even a broken log stream, may keep the process alive
            self.hard_exit(1)

    @property
    def tick(self) -> float:
        """How often the loop looks for due studies: often, since that is a local query;
        the feed itself is read every `poll_interval`."""
        return min(TICK, self.settings.poll_interval)

    def _cycle(self) -> None:
        self.beat()
        now = time.monotonic()
        feed_due = now - self._tailed_at >= self.settings.poll_interval - self.tick / 2
        if feed_due and any(self.tailing.values()):
            self._tailed_at = now
            try:
                self.tail(strict=False)
            except StateUnavailable as exc:
                self.pauses["state"].trip(exc)
        while not self.stop_event.is_set():
            if self.sync_round(wait_for_stable=True).attempted == 0:
                break

    def _reconcile_job(self) -> None:
        for name in self.sources:
            if self.tailing[name] and not self.source_pause(name).active():
                self.reconcile(name)

    def _guarded(self, job: Callable[[], object]) -> Callable[[], None]:
        """A scheduled job logs its failure and lets the next run try again."""

        def run() -> None:
            try:
                job()
            except DicomcastError as exc:
                log.warning("%s failed: %s", job.__name__, exc)
            except Exception:
                log.exception("%s failed unexpectedly", job.__name__)

        return run


def _union_of(parts: list[Contribution], subject: Any) -> dict[str, Any]:
    if not parts:
        raise FhirConflict("the study's parts vanished while it was written; re-reading")
    return union([Part(c.body["study"], c.body.get("endpoint")) for c in parts], subject)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _outcome_suffix(exc: Exception) -> str:
    outcome = getattr(exc, "outcome", "")
    return f" — {outcome}" if outcome else ""
