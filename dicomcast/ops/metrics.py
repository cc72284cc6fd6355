"""Prometheus metrics. Prefix `dicomcast_`, base units (seconds), labels of low cardinality
only (source, resource type, outcome, status class): never a UID or a patient.

Counters and histograms are moved by the worker as things happen. Gauges that describe the
state DB (dirty, failed, oldest dirty, last success, cursor) are read from it at scrape time
by `StateCollector`, so every worker process reports the same truth and nothing drifts.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dicomcast import __version__
from dicomcast.model import SourceSummary


class Summaries(Protocol):
    """Where the state gauges come from (the state DB's reports)."""

    def summary(self, source: str) -> SourceSummary: ...


LAG_BUCKETS = (0.5, 1, 2, 3, 5, 7.5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def status_class(status: int | None) -> str:
    """`2xx` .. `5xx`, or `error` when no response came back (timeout, reset)."""
    return f"{status // 100}xx" if status else "error"


class Metrics:
    """Every metric one worker process exports, in its own registry (tests make several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        Info("dicomcast_build", "The running dicomcast version.", registry=r).info(
            {"version": __version__}
        )
        self.changes_read = Counter(
            "dicomcast_changes_read", "Change-feed entries read.", ["source"], registry=r
        )
        self.studies = Counter(
            "dicomcast_studies",
            "Study sync attempts by outcome: synced (FHIR written), unchanged (nothing to "
            "write), deleted, failed (parked), retry (backing off), deferred (not stable yet).",
            ["source", "outcome"],
            registry=r,
        )
        self.fhir_requests = Counter(
            "dicomcast_fhir_requests",
            "HTTP requests sent to the FHIR server.",
            ["resource_type", "status_class"],
            registry=r,
        )
        self.fhir_request_duration = Histogram(
            "dicomcast_fhir_request_duration_seconds",
            "Time from sending a FHIR request to its full response.",
            ["resource_type"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.source_requests = Counter(
            "dicomcast_source_requests",
            "HTTP requests sent to the DICOM server.",
            ["source", "status_class"],
            registry=r,
        )
        self.sync_lag = Histogram(
            "dicomcast_sync_lag_seconds",
            "End-to-end lag: from the source's change event to the FHIR commit.",
            ["source"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.study_duration = Histogram(
            "dicomcast_study_sync_duration_seconds",
            "Wall time of one study sync (read, map, write).",
            ["source"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.feed_head = Gauge(
            "dicomcast_feed_head",
            "The newest position of the source's change feed, as last read.",
            ["source"],
            registry=r,
        )
        self.feed_cursor = Gauge(
            "dicomcast_feed_cursor",
            "How far this worker has durably read the change feed.",
            ["source"],
            registry=r,
        )
        self.feed_skipped = Counter(
            "dicomcast_feed_entries_skipped",
            "Change-feed entries skipped because they could not be used (see status).",
            ["source"],
            registry=r,
        )
        self.received = Counter(
            "dicomcast_instances_received",
            "Instances a C-STORE listener answered, by outcome (stored, refused, "
            "unavailable: the state DB failed and the sender was told to retry).",
            ["source", "outcome"],
            registry=r,
        )
        self.feed_failing = Gauge(
            "dicomcast_feed_failing",
            "1 while reading a source's change feed keeps failing on one position.",
            ["source"],
            registry=r,
        )
        self.dependency_up = Gauge(
            "dicomcast_dependency_up",
            "1 when the last readiness probe of a dependency (state, source, fhir) succeeded.",
            ["dependency"],
            registry=r,
        )
        self.paused = Gauge(
            "dicomcast_paused",
            "1 while syncing is paused because a server is unavailable or throttling.",
            ["dependency"],
            registry=r,
        )
        self.drift = Gauge(
            "dicomcast_drift_studies",
            "Studies out of sync by kind (missing, extra, stale, dangling, duplicate) at the "
            "last verify of the source (DICOMCAST_VERIFY_INTERVAL).",
            ["source", "kind"],
            registry=r,
        )
        self.heartbeat = Gauge(
            "dicomcast_loop_heartbeat_timestamp_seconds",
            "When the worker's loop last made progress (Unix time).",
            registry=r,
        )

    def start_source(self, source: str, outcomes: Iterable[str]) -> None:
        """Every labelled series an alert reads, at 0 from the start: a counter whose first
        sample is 1 has no increase() of its own, and its first failure would go unseen."""
        for outcome in outcomes:
            self.studies.labels(source, outcome)
        self.changes_read.labels(source)
        self.feed_skipped.labels(source)
        self.feed_failing.labels(source).set(0)

    def observe_fhir(self, resource_type: str, status: int | None, seconds: float) -> None:
        self.fhir_requests.labels(resource_type, status_class(status)).inc()
        self.fhir_request_duration.labels(resource_type).observe(seconds)

    def observe_source(self, source: str, status: int | None) -> None:
        self.source_requests.labels(source, status_class(status)).inc()

    def set_feed(self, source: str, cursor: str | None, head: str | None) -> None:
        self.feed_cursor.labels(source).set(_number(cursor))
        self.feed_head.labels(source).set(_number(head))

    def watch_state(self, store: Summaries, sources: Callable[[], Sequence[str]]) -> None:
        self.registry.register(StateCollector(store, sources))

    def watch_pauses(self, pauses: Mapping[str, Pausing]) -> None:
        """`dicomcast_paused` read at each scrape: a pause shows from the moment it is
        tripped (the log's "pausing"), not from the next `/readyz` request."""
        for name, pause in pauses.items():
            self.paused.labels(name).set_function(
                functools.partial(lambda p: 1.0 if p.active() else 0.0, pause)
            )


class Pausing(Protocol):
    def active(self, now: float | None = None) -> bool: ...


def _number(value: str | None) -> float:
    """Feed positions are numbers for Orthanc; anything else is exported as NaN."""
    try:
        return float(value) if value is not None else math.nan
    except ValueError:
        return math.nan


class StateCollector(Collector):
    """Gauges read from the state DB. A scrape never waits on the database: summaries are
    refreshed in the background (at most once per `fresh_for` seconds) and a scrape gets
    the last ones; a DB that fails leaves the gauges out (and `/readyz` says why)."""

    def __init__(
        self, store: Summaries, sources: Callable[[], Sequence[str]], fresh_for: float = 2.0
    ) -> None:
        self.store = store
        self.sources = sources
        self.fresh_for = fresh_for
        self._summaries: list[SourceSummary] | None = None
        self._read_at = -math.inf
        self._refreshing: threading.Thread | None = None
        self._lock = threading.Lock()

    def _refresh(self) -> None:
        try:
            summaries: list[SourceSummary] | None = [
                self.store.summary(source) for source in self.sources()
            ]
        except Exception:  # noqa: BLE001 - a scrape must not fail because the DB did
            summaries = None
        with self._lock:
            self._summaries, self._read_at = summaries, time.monotonic()

    def summaries(self, wait: float = 1.0) -> list[SourceSummary] | None:
        """The latest summaries; starts a refresh when they are stale and waits for it at
        most `wait` seconds."""
        with self._lock:
            stale = time.monotonic() - self._read_at > self.fresh_for
            running = self._refreshing is not None and self._refreshing.is_alive()
            if stale and not running:
                self._refreshing = threading.Thread(target=self._refresh, daemon=True)
                self._refreshing.start()
            thread = self._refreshing
        if stale and thread is not None:
            thread.join(wait)
        with self._lock:
            return self._summaries

    def collect(self) -> Iterable[Metric]:
        summaries = self.summaries()
        if summaries is None:
            return
        dirty = GaugeMetricFamily(
            "dicomcast_studies_dirty", "Studies waiting to be synced.", labels=["source"]
        )
        failed = GaugeMetricFamily(
            "dicomcast_studies_failed",
            "Studies parked as failed until an operator acts, by error kind.",
            labels=["source", "kind"],
        )
        oldest = GaugeMetricFamily(
            "dicomcast_oldest_dirty_age_seconds",
            "Age of the oldest change not yet in FHIR (0 when none is waiting).",
            labels=["source"],
        )
        success = GaugeMetricFamily(
            "dicomcast_last_success_timestamp_seconds",
            "When a study of this source was last synced successfully (Unix time).",
            labels=["source"],
        )
        backfill = GaugeMetricFamily(
            "dicomcast_backfill_studies",
            "The running backfill's studies: listed to sync, done, failed.",
            labels=["source", "state"],
        )
        backfill_rate = GaugeMetricFamily(
            "dicomcast_backfill_rate",
            "Studies per second the running backfill has settled since it started.",
            labels=["source"],
        )
        backfill_eta = GaugeMetricFamily(
            "dicomcast_backfill_eta_seconds",
            "Seconds until the running backfill is done, at its rate so far.",
            labels=["source"],
        )
        held = GaugeMetricFamily(
            "dicomcast_deletions_held",
            "Studies gone from their source whose deletion from FHIR waits for an operator "
            "(over DICOMCAST_DELETE_BUDGET): dicomcast deletions list.",
            labels=["source"],
        )
        now = time.time()
        for summary in summaries:
            held.add_metric([summary.source], summary.counts.get("held", 0))
            run = summary.backfill
            if run is not None:
                for state, count in (("to_sync", run.marked), ("done", run.done)):
                    backfill.add_metric([summary.source, state], count)
                backfill.add_metric([summary.source, "failed"], run.failed)
                backfill_rate.add_metric([summary.source], run.rate)
                if run.eta is not None:
                    backfill_eta.add_metric([summary.source], run.eta)
            source = summary.source
            dirty.add_metric([source], summary.dirty)
            for kind, count in summary.failures_by_kind.items():
                failed.add_metric([source, kind], count)
            oldest.add_metric(
                [source], max(0.0, now - summary.oldest_event) if summary.oldest_event else 0
            )
            if summary.last_success_at:
                success.add_metric([source], summary.last_success_at)
        yield from (dirty, failed, oldest, success, backfill, backfill_rate, backfill_eta, held)
