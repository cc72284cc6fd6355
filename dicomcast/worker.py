"""The controller: tail the feeds into the dirty set, claim due studies, reconcile each, and
record every outcome, in this one place.

A study's path, top to bottom:
feed (`sync.feed`) -> dirty set (`state.queue`) -> claim -> reconcile (`sync.reconcile`:
source -> study view -> mapping -> FHIR write) -> `Outcome` -> `Worker.record` -> state DB.

Failures are sorted by whose they are (`sync.policy`). A study's own (a refusal, a 500 that
repeats) costs that study an attempt and backs it off alone. An outage (a server
unreachable, throttling, refusing our credentials; the state DB failing) is nobody's
study's: it pauses all syncing against that server (`sync.pauses`), costs no attempts, and
clears by itself when the server answers again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dicomcast import runner
from dicomcast.errors import (
    ConfigError,
    FhirRejected,
    StateUnavailable,
    failure_class,
    failure_label,
)
from dicomcast.mapping.settings import MappingConfigs
from dicomcast.model import Kind, Outcome, RoundStats, StudyTask, source_dependency
from dicomcast.ops.memory import release_free_memory, settle_heap
from dicomcast.parts import App
from dicomcast.sources.base import Source
from dicomcast.state.locks import StudyLocks
from dicomcast.sync.endpoints import Endpoints
from dicomcast.sync.feed import Feed, per_source
from dicomcast.sync.leases import SourceLeases, process_name, refuse_a_twin
from dicomcast.sync.multisource import MultiSource
from dicomcast.sync.pace import BackfillPace
from dicomcast.sync.pauses import Pause, Pauses
from dicomcast.sync.policy import FailurePolicy, repeated_outage
from dicomcast.sync.reconcile import Reconciler

log = logging.getLogger(__name__)
TICK = 0.5  # seconds between looks for due studies (the feed is polled less often)


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
        self.settings = settings = app.settings
        self.sources = app.sources
        self.store = app.store
        self.metrics = app.metrics
        self.owner = owner or settings.worker_id
        self.instance = process_name()  # which process speaks as `owner`
        self.stop_event = threading.Event()
        self.totals: Counter[str] = Counter()
        self.progress_at = time.time()  # the loop's heartbeat, for /livez
        for name in self.sources:
            self.metrics.start_source(name, sorted({kind.label for kind in Kind} | {"retry"}))
        names = ["fhir", "state", *(source_dependency(name) for name in self.sources)]
        self.pauses = Pauses(names, min(settings.backoff_base, 5.0), settings.backoff_max)
        self.leases = SourceLeases(self.store, self.owner, self.sources, settings.feed_lease)
        configs = MappingConfigs(settings)
        locks = StudyLocks(self.store.db)
        self.endpoints = Endpoints(app.mappings, app.writer, configs, locks)
        self.feed = Feed(
            self.store,
            self.sources,
            self.metrics,
            page_size=settings.feed_page_size,
            stop=self.stop_event,
            totals=self.totals,
            beat=self.beat,
        )
        self.reconciler = Reconciler(
            sources=self.sources,
            mappings=app.mappings,
            writer=app.writer,
            endpoints=self.endpoints,
            configs=configs,
            multi=MultiSource(self.store, list(self.sources)),
            locks=locks,
            policy=FailurePolicy(
                settings.max_attempts, settings.backoff_base, settings.backoff_max
            ),
            patient_policy=settings.patient_policy,
            stable_wait_max=settings.stable_wait_max,
            recheck=self.tick,
            deletions=self.store,
            delete_budget=settings.delete_budget,
        )
        self.pace = BackfillPace(per_round=2 * settings.concurrency)
        self._settled = False
        self.tailed_at = -1e9  # monotonic time of the last feed read in the loop (runner's)
        self._unrecorded: list[StudyTask] = []  # claims the state DB failed to release
        self._pool = ThreadPoolExecutor(max_workers=settings.concurrency, thread_name_prefix="sync")

    @property
    def source(self) -> Source:
        """The first source (the only one in a single-source setup)."""
        return self.app.source

    @property
    def tailing(self) -> dict[str, bool]:
        """The sources whose feed this worker tails (holds the lease of)."""
        return self.leases.tailing

    @property
    def tick(self) -> float:
        """How often the loop looks for due studies: often, since that is a local query;
        the feed itself is read every `poll_interval`."""
        return min(TICK, self.settings.poll_interval)

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def source_pause(self, name: str) -> Pause:
        """The pause of one source: an outage there stops only that source's studies."""
        return self.pauses[source_dependency(name)]

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with contextlib.suppress(StateUnavailable):  # then only a lease's wait for the next
            self.store.leave(self.owner, self.instance)  # a clean exit: the name is free

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
        """Refuse a worker name another live process uses; register the sources, take back
        our stale claims, find or create the Endpoints."""
        refuse_a_twin(self.store, self.owner, self.instance, self.settings.feed_lease)
        self.store.heartbeat(self.owner, within=0, instance=self.instance)
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
                try:
                    self.endpoints.ref(name, location)
                except FhirRejected as exc:  # a FHIR base answers a search, never 404
                    if exc.status != 404:
                        raise
                    raise ConfigError(f"{exc}: {self.app.fhir.not_a_base()}") from None

    def hold_source(self) -> bool:
        """Take or renew the leases that make this worker the sources' one tailer; True
        when it tails at least one."""
        return self.leases.hold()

    # --- the feed

    def tail(self, *, strict: bool = True, failed: dict[str, Exception] | None = None) -> int:
        """Read every held, unpaused source's feed to its end; returns how many studies were
        dirtied. Errors are handled as `per_source` says."""
        held = [n for n in self.sources if self.tailing[n] and not self.source_pause(n).active()]
        return per_source(held, self.feed.tail, self.pauses, strict=strict, failed=failed)

    def follow_backfills(self) -> None:
        """Say this worker is alive, and learn which backfills run, their limits and how
        many workers share them (at every poll of the feed)."""
        live = self.store.heartbeat(
            self.owner, within=3 * self.settings.poll_interval + 10, instance=self.instance
        )
        self.pace.update(self.store.backfill_limits(), workers=live)

    # --- syncing

    def paused_until(self, source: str | None = None) -> float | None:
        """When the pause blocking syncs ends (the FHIR server's, the state DB's, and the
        given source's, or any source's without one); None when nothing is paused."""
        names = [source] if source else list(self.sources)
        return self.pauses.until(["fhir", "state", *map(source_dependency, names)])

    def sync_round(self, *, wait_for_stable: bool, skip: Collection[str] = ()) -> RoundStats:
        """Sync every study that is due now, `concurrency` at a time (none while the FHIR
        server or the state DB is paused; none of a paused source, nor of those in `skip`)."""
        stats = RoundStats()
        if self.pauses.any_active(["fhir", "state"]):
            return stats
        self._release_unrecorded()
        limit = self.settings.concurrency * 16
        now = time.time()
        claimed: list[StudyTask] = []
        for name in self.sources:
            if name in skip or self.source_pause(name).active(now):
                continue
            lease = self.settings.claim_lease
            claimed += self.store.claim_due(name, self.owner, lease, limit, now=now)
            if self.pace.running(name):  # a backfill's studies fill in behind live ones
                room = self.pace.admit(name, self.app.fhir.request_count)
                more = self.store.claim_due(name, self.owner, lease, room, priority=1, now=now)
                self.pace.spend(name, len(more))
                claimed += more
        for outcome in self._pool.map(lambda t: self.sync_one(t, wait_for_stable), claimed):
            stats.outcomes[outcome] += 1
        if claimed:
            release_free_memory()
            if not self._settled:  # the FHIR models the first syncs imported live on too
                settle_heap()
                self._settled = True
        return stats

    def sync_one(self, task: StudyTask, wait_for_stable: bool = False) -> str:
        """Bring one study's FHIR state in line with the source and record the outcome;
        never raises. Returns the outcome's label."""
        started = time.monotonic()
        paused = self.paused_until(task.source)
        if self.stop_event.is_set() or paused is not None:
            outcome = Outcome(Kind.DEFERRED, retry_at=paused, study_uid=task.study_uid)
        else:
            outcome = self.reconciler.sync(task, wait_for_stable=wait_for_stable)
        label = self.record(task, outcome)
        self.totals[label] += 1
        self.metrics.studies.labels(task.source, label).inc()
        if outcome.kind.settled:
            self.metrics.study_duration.labels(task.source).observe(time.monotonic() - started)
            if task.event_time and not task.priority:  # a backfill's studies wait on purpose
                self.metrics.sync_lag.labels(task.source).observe(
                    max(0.0, time.time() - task.event_time)
                )
        self.beat()
        log.info(
            "study %s",
            label,
            extra={
                **_extra(task, outcome, label),
                "ms": round((time.monotonic() - started) * 1000),
            },
        )
        return label

    def record(self, task: StudyTask, outcome: Outcome) -> str:
        """Write what became of one attempt into the state DB; returns the outcome's label.
        The one place a sync's result is recorded."""
        # Only answers to requests sent after a pause began clear it (an answer to an
        # older request says nothing of the server since), and never before Retry-After.
        self.pauses.clear(outcome.answered, sent_at=outcome.started_at)
        if self._repeated_outage(task, outcome):
            # Judged its own once already, or the server answered others since it failed.
            since = self.pauses[outcome.dependency or ""].answered_at > (task.failed_at or 0)
            answered = task.attempts > 0 or since
            outcome = repeated_outage(
                outcome, task, self.reconciler.policy, answered_since=answered, now=time.time()
            )
        kind = outcome.kind
        try:
            if kind is Kind.PAUSED and outcome.dependency == "state":
                raise StateUnavailable(outcome.reason or "state database failed")
            if kind in (Kind.SYNCED, Kind.UNCHANGED):
                assert outcome.written is not None
                self.store.finish_clean(task, outcome.written)
            elif kind is Kind.DELETED:
                self.store.finish_gone(task)
            elif kind is Kind.HELD:
                self.store.finish_held(task)
                log.warning(
                    "study deletion held: %s", outcome.reason, extra=_extra(task, outcome, "held")
                )
            elif kind is Kind.DEFERRED:
                self.store.release(task, not_before=outcome.retry_at)
            else:
                self._record_failure(task, outcome)
        except StateUnavailable as exc:
            # Nothing about this study could be recorded; its claim is released once the
            # database answers again (or expires), and the next sync starts from scratch.
            self.pauses["state"].trip(str(exc), exc.retry_after, kind=failure_class(exc))
            self._unrecorded.append(task)
            log.warning("state database failed: %s", exc, extra=_extra(task, outcome, "retry"))
            return "retry"
        return kind.label

    @staticmethod
    def _repeated_outage(task: StudyTask, outcome: Outcome) -> bool:
        """The study failed last time with the same server-side 5xx (see
        `policy.repeated_outage`)."""
        return (
            outcome.kind is Kind.PAUSED
            and outcome.dependency not in (None, "state")
            and outcome.status is not None
            and outcome.status >= 500
            and task.error_status == outcome.status
            and task.failed_at is not None
        )

    def _record_failure(self, task: StudyTask, outcome: Outcome) -> None:
        reason, error_kind = outcome.reason or "", outcome.error_kind or "Error"
        extra = {**_extra(task, outcome, outcome.kind.label), "detail": outcome.detail}
        if outcome.kind is Kind.PAUSED:
            assert outcome.dependency is not None
            now = time.time()
            after = max(0.0, (outcome.retry_at or now) - now)  # a repeated one waits longer
            until = after + self.pauses[outcome.dependency].trip(
                reason,
                outcome.retry_after,
                now,
                kind=failure_label(outcome.error_kind or "unavailable", outcome.status),
            )
            self.store.finish_failed(
                task,
                reason,
                error_kind,
                park=False,
                retry_at=until,
                http_status=outcome.status,
                count_attempt=False,
                detail=outcome.detail,
            )
        elif outcome.kind is Kind.PARKED:
            self.store.finish_failed(
                task,
                reason,
                error_kind,
                park=True,
                retry_at=None,
                http_status=outcome.status,
                detail=outcome.detail,
                seen_count=outcome.seen_count,
                study_uid=outcome.study_uid,
            )
            log.warning("study parked (attempt %d): %s", task.attempts + 1, reason, extra=extra)
        else:
            self.store.finish_failed(
                task,
                reason,
                error_kind,
                park=False,
                retry_at=outcome.retry_at,
                http_status=outcome.status,
                detail=outcome.detail,
                seen_count=outcome.seen_count,
                study_uid=outcome.study_uid,
            )
            wait = (outcome.retry_at or time.time()) - time.time()
            log.info("study will be retried in %.0f s: %s", wait, reason, extra=extra)

    def _release_unrecorded(self) -> None:
        while self._unrecorded:
            self.store.release(self._unrecorded[-1])
            self._unrecorded.pop()
        self.pauses["state"].clear()

    # --- running (the loops live in `dicomcast.runner`)

    def run_once(self, progress: Callable[[RoundStats], None] | None = None) -> int:
        """Drain the feed and every due study, then return an exit code (0 = all clean);
        see `dicomcast.runner.run_once`."""
        return runner.run_once(self, progress)

    def cycle(self) -> None:
        """The loop's job, every tick (see `dicomcast.runner.cycle`)."""
        runner.cycle(self)

    def run_forever(self, on_ready: Callable[[], None] | None = None) -> None:
        """The long-running worker, until SIGTERM/SIGINT (see `dicomcast.runner`)."""
        runner.run_forever(self, on_ready)


def _extra(task: StudyTask, outcome: Outcome, label: str) -> dict[str, Any]:
    """The fields of a study's log line: never patient data, only keys and the outcome."""
    return {
        "source": task.source,
        "study_key": task.study_key,
        "study_uid": outcome.study_uid or task.study_uid,
        "outcome": label,
    }
