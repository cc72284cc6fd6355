"""The worker, the controller that records every outcome. Whose failure is it? Outages
pause everything and cost no attempts; a study's own errors back it off alone and park it;
the state DB failing never moves the cursor; a stop that cannot wait ends the process
within its bound."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dicomcast.app import build_app
from dicomcast.config import load_settings
from dicomcast.errors import SourceUnavailable, StateUnavailable
from dicomcast.sandbox.samples import DEMO_ISSUERS, bulk_studies
from dicomcast.sources.base import FetchedStudy
from dicomcast.state.store import StateStore
from dicomcast.worker import Worker
from tests.fakes import FakeSource, StatusFhir, dicom_json, fake_worker
from tests.fhir_fake import FakeFhir


def make_worker(
    tmp_path: Path,
    fhir: StatusFhir,
    *,
    source: Any = None,
    store: StateStore | None = None,
    **overrides: Any,
) -> Worker:
    values: dict[str, Any] = {
        "source_url": "http://dicom.test",
        "fhir_url": "http://fhir.test",
        "state_url": f"sqlite:///{tmp_path / 'state.db'}",
        "patient_id_system": "urn:oid:1.2.3",
        "issuer_systems": DEMO_ISSUERS,
        "http_retries": 2,
        "http_retry_base": 0.01,
        "backoff_base": 0.05,
        "backoff_max": 0.2,
        "max_attempts": 3,
        "http_port": 0,
    }
    values.update(overrides)
    specs = bulk_studies(3, 2, patients=2, prefix="policy")
    source = source or FakeSource({s.study_uid: dicom_json(s) for s in specs})
    app = build_app(load_settings(None, **values), source=source, fhir_transport=fhir)
    if store is not None:
        app.store.close()
        app.store = store
    worker = Worker(app)
    # The Endpoint step is the upsert tests' business.
    worker.endpoints.known[FakeSource.location_.address] = "Endpoint/e"
    app.store.ensure_source(source.name, source.kind)
    assert worker.hold_source()
    return worker


def rows(worker: Worker) -> list[Any]:
    return worker.store.failures(worker.source.name)


def until_unpaused(worker: Worker) -> None:
    deadline = time.monotonic() + 5
    while worker.paused_until() is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    # Every waiting study's due time must have passed too (each has its own jitter).
    due = max((r.next_attempt_at or 0 for r in rows(worker) if r.status == "dirty"), default=0)
    time.sleep(max(0.0, due - time.time()) + 0.01)


def test_an_outage_pauses_syncing_and_spends_no_attempts(tmp_path: Path) -> None:
    fhir = StatusFhir(503)
    # Pauses long enough (0.4 s and up) to be seen active right after the round.
    worker = make_worker(tmp_path, fhir, backoff_base=0.5, backoff_max=1.0)
    worker.tail()
    for _ in range(4):  # far more outage rounds than max_attempts
        until_unpaused(worker)
        stats = worker.sync_round(wait_for_stable=False)
        assert set(stats.outcomes) <= {"retry", "deferred"} and stats.outcomes["retry"] >= 1
        assert worker.pauses["fhir"].active()
        # While paused, nothing is claimed and nothing is sent.
        sent = fhir.requests
        assert worker.sync_round(wait_for_stable=False).attempted == 0
        assert fhir.requests == sent
    failures = rows(worker)
    assert len(failures) == 3
    for row in failures:
        assert (row.status, row.attempts, row.error_status) == ("dirty", 0, 503)
        assert row.error_kind == "FhirUnavailable" and "HTTP 503" in (row.last_error or "")
    assert worker.pauses["fhir"].streak >= 2  # the pause grew


def test_a_studys_own_errors_back_it_off_then_park_it(tmp_path: Path) -> None:
    fhir = StatusFhir(500)
    worker = make_worker(tmp_path, fhir)
    worker.tail()
    for _ in range(3):
        until_unpaused(worker)
        worker.sync_round(wait_for_stable=False)
        assert worker.paused_until() is None  # a 500 is not an outage
    parked = rows(worker)
    assert [(r.status, r.attempts, r.error_status) for r in parked] == [("failed", 3, 500)] * 3
    assert "boom" in (parked[0].error_detail or "")  # the OperationOutcome text is kept
    assert "boom" not in (parked[0].last_error or "")  # apart from what logs may show

    # An operator retries them all; a 422 is deterministic: parked after one attempt.
    assert worker.store.retry(worker.source.name, None) == 3
    fhir.status = 422
    outcomes = worker.sync_round(wait_for_stable=False).outcomes
    assert outcomes == {"failed": 3}
    assert [(r.status, r.attempts, r.error_kind) for r in rows(worker)] == [
        ("failed", 1, "FhirRejected")
    ] * 3


def test_retry_after_is_honoured_in_process_and_by_the_pause(tmp_path: Path) -> None:
    fhir = StatusFhir(429, headers={"Retry-After": "1"})
    worker = make_worker(tmp_path, fhir, concurrency=1)
    worker.tail()
    started, started_wall = time.monotonic(), time.time()
    worker.sync_one(worker.store.due(worker.source.name, 1)[0])
    assert time.monotonic() - started >= 0.95  # the second try waited for Retry-After
    assert fhir.requests == 2
    # ...and then the pause lasts at least another Retry-After from the second answer.
    assert worker.pauses["fhir"].until - started_wall >= 1.9


class FlakyStore(StateStore):
    """A real SQLite store whose writes of a feed page fail while `broken` is set."""

    broken = False

    def record_page(self, *args: Any, **kwargs: Any) -> int:
        if self.broken:
            raise StateUnavailable("state database error in record_page: disk I/O error")
        return super().record_page(*args, **kwargs)


def test_a_state_db_failure_never_moves_or_resets_the_cursor(tmp_path: Path) -> None:
    store = FlakyStore(f"sqlite:///{tmp_path / 'flaky.db'}")
    store.migrate()
    worker = make_worker(tmp_path, StatusFhir(503), store=store)
    store.broken = True
    worker.cycle()  # the scheduled job: must not raise
    source = store.get_source("default")
    assert source is not None and source.cursor is None and source.resets == 0
    assert worker.pauses["state"].active() and store.counts("default") == {}
    store.broken = False
    worker.pauses["state"].clear()
    worker.tail()
    source = store.get_source("default")
    assert source is not None and source.cursor == "3" and store.counts("default") == {"dirty": 3}


class SlowSource(FakeSource):
    """A study read that takes 5 s, or until `release` is set."""

    started = threading.Event()
    release = threading.Event()

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        self.started.set()
        self.release.wait(5)
        return super().fetch_study(key)


def test_a_stop_that_cannot_finish_in_time_exits_within_its_bound(tmp_path: Path) -> None:
    specs = bulk_studies(1, 1, patients=1, prefix="slow")
    source = SlowSource({s.study_uid: dicom_json(s) for s in specs})
    worker = make_worker(tmp_path, StatusFhir(503), source=source, shutdown_timeout=0.5)
    exits: list[int] = []
    worker.hard_exit = exits.append
    runner = threading.Thread(target=worker.run_forever)
    runner.start()
    assert source.started.wait(10)
    stopped_at = time.monotonic()
    worker.stop_event.set()  # what SIGTERM does
    runner.join(10)
    assert not runner.is_alive() and exits == [1]
    assert time.monotonic() - stopped_at < 3.0  # not the 5 s the study would need
    summary = worker.store.summary("default")
    assert summary.holder is None  # the lease was handed back for the next worker
    source.release.set()
    worker._pool.shutdown(wait=True)


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_an_outage_not_the_studies_fault(
    tmp_path: Path, status: int
) -> None:
    worker = make_worker(tmp_path, StatusFhir(status), backoff_base=0.3)
    worker.tail()
    worker.sync_round(wait_for_stable=False)
    assert {(r.status, r.attempts) for r in rows(worker)} == {("dirty", 0)}
    assert worker.pauses["fhir"].active()


class SwitchableSource(FakeSource):
    """A fake source that can go down: every request then fails as an outage."""

    down = False

    def _check_up(self) -> None:
        if self.down:
            raise SourceUnavailable(f"{self.name} unreachable", outage=True, retry_after=5)

    def read_changes(self, cursor: str | None, limit: int) -> Any:
        self._check_up()
        return super().read_changes(cursor, limit)

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        self._check_up()
        return super().fetch_study(key, unless_unstable=unless_unstable)


def test_one_source_down_pauses_only_its_own_studies(tmp_path: Path) -> None:
    def studies(prefix: str) -> dict[str, Any]:
        specs = bulk_studies(3, 1, patients=1, prefix=prefix)
        return {s.study_uid: dicom_json(s) for s in specs}

    up, down = SwitchableSource(studies("up"), "up"), SwitchableSource(studies("dn"), "down")
    settings = load_settings(
        None,
        sources=[
            {"name": "up", "url": "http://up.test"},
            {"name": "down", "url": "http://dn.test"},
        ],
        fhir_url="http://fhir.test",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        patient_id_system="urn:oid:1.2.3",
        issuer_systems=DEMO_ISSUERS,
        http_retries=1,
        backoff_base=0.05,
        backoff_max=0.2,
        http_port=0,
    )
    fhir = StatusFhir(500)  # every write fails as the study's own error: it backs off alone
    worker = Worker(build_app(settings, sources=[up, down], fhir_transport=fhir))
    worker.endpoints.known[FakeSource.location_.address] = "Endpoint/e"
    for name in ("up", "down"):
        worker.store.ensure_source(name, "fake")
    assert worker.hold_source()
    assert worker.tail() == 6
    down.down = True
    first = worker.sync_round(wait_for_stable=False)
    # The up-studies fail on their own (500); the first down-study trips its source's
    # pause, and down-studies starting after that are deferred without being tried.
    assert first.attempted == 6 and set(first.outcomes) <= {"retry", "deferred"}
    assert worker.pauses["source:down"].active()
    assert not worker.pauses["source:up"].active() and not worker.pauses["fhir"].active()
    # The feed of the healthy source is still read while the other one is down.
    up.feed.append(next(iter(up.studies)))
    assert worker.tail(strict=False) == 1 and worker.pauses["source:down"].active()
    time.sleep(0.3)  # the up-studies' own backoff (<= 0.2 s) has passed; the pause has not
    sent = fhir.requests
    second = worker.sync_round(wait_for_stable=False)
    assert second.outcomes == {"retry": 3} and fhir.requests > sent
    assert worker.store.counts("down") == {"dirty": 3}
    down_rows = worker.store.failures("down")
    assert down_rows and all(r.attempts == 0 for r in down_rows)  # outages cost no attempts
    assert {r.error_kind for r in down_rows} == {"SourceUnavailable"}
    worker.close()
    worker.app.close()


def test_every_counter_an_alert_reads_starts_at_zero(tmp_path: Path) -> None:
    """A series born at 1 has no increase(): the first failure would fire no alert."""
    worker = fake_worker(tmp_path, FakeFhir(), FakeSource({}))
    registry = worker.metrics.registry
    for outcome in ("failed", "held", "deleted", "synced", "retry"):
        labels = {"source": "default", "outcome": outcome}
        assert registry.get_sample_value("dicomcast_studies_total", labels) == 0.0, outcome
    assert (
        registry.get_sample_value("dicomcast_feed_entries_skipped_total", {"source": "default"})
        == 0.0
    )
    worker.close()
    worker.app.close()


def test_a_pause_shows_in_the_metric_from_the_moment_it_is_tripped() -> None:
    """dicomcast_paused was set only when /readyz was asked: at start-up, the log said
    'pausing' while /metrics said 0."""
    from prometheus_client import generate_latest

    from dicomcast.ops.metrics import Metrics
    from dicomcast.sync.pauses import Pauses

    now = [100.0]
    pauses = Pauses(["fhir", "state"], 1.0, 10.0, clock=lambda: now[0], jitter=lambda a, b: a)
    metrics = Metrics()
    metrics.watch_pauses(pauses)

    def paused(name: str) -> str:
        line = f'dicomcast_paused{{dependency="{name}"}}'
        text = generate_latest(metrics.registry).decode()
        return next(ln for ln in text.splitlines() if ln.startswith(line)).split()[-1]

    assert paused("fhir") == "0.0"
    pauses["fhir"].trip("FHIR server unreachable", now=100.0)
    assert paused("fhir") == "1.0" and paused("state") == "0.0"
    now[0] = 1000.0  # the pause ran out
    assert paused("fhir") == "0.0"
