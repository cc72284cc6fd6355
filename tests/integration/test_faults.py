"""Faults between the worker and a real FHIR server: 5xx bursts, 429 with Retry-After,
timeouts, connections reset after the server already applied the request, refused
connections and slow answers. The end state must equal a fault-free run's, and the retries
must follow the policy."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dicomcast.app import build_app
from dicomcast.config import Settings
from dicomcast.sandbox.samples import bulk_studies, demo_studies, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.worker import Worker
from tests.integration.fhir_state import comparable_state, duplicates

pytestmark = pytest.mark.integration
OUTCOME_503 = {
    "resourceType": "OperationOutcome",
    "issue": [{"severity": "error", "code": "transient", "diagnostics": "injected"}],
}


class FaultyTransport(httpx.BaseTransport):
    """Forwards to the real server, but every `every`-th request meets the next fault in turn.

    Deterministic, so every kind is injected on every run. Records what each thread sent,
    so the test can check the retry policy from the outside."""

    KINDS = ("503-burst", "429", "timeout", "reset-after-apply", "refused", "slow")

    def __init__(self, every: int = 2) -> None:
        self.inner = httpx.HTTPTransport()
        self.every = every
        self.lock = threading.Lock()
        self.count = 0
        self.rounds = 0
        self.burst = 0
        self.injected: Counter[str] = Counter()
        self.sent: dict[int, list[tuple[float, str, str | None]]] = defaultdict(list)

    def _fault(self) -> str | None:
        with self.lock:
            self.count += 1
            if self.burst:
                self.burst -= 1
                return "503-burst"
            if self.count % self.every:
                return None
            kind = self.KINDS[self.rounds % len(self.KINDS)]
            self.rounds += 1
            if kind == "503-burst":
                self.burst = 2  # three 503s in a row
            return kind

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        kind = self._fault()
        identity = f"{request.method} {request.url} {hash(request.read())}"
        self.sent[threading.get_ident()].append((time.monotonic(), identity, kind))
        if kind:
            with self.lock:
                self.injected[kind] += 1
        if kind == "503-burst":
            return httpx.Response(503, json=OUTCOME_503)
        if kind == "429":
            return httpx.Response(429, headers={"Retry-After": "1"}, json=OUTCOME_503)
        if kind == "timeout":
            raise httpx.ReadTimeout("injected timeout", request=request)
        if kind == "refused":
            raise httpx.ConnectError("injected refusal", request=request)
        if kind == "slow":
            time.sleep(0.4)
        response = self.inner.handle_request(request)
        if kind == "reset-after-apply":  # the server did the work; the answer is lost
            response.read()
            response.close()
            raise httpx.RemoteProtocolError("injected reset", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def sync_until_clean(settings: Settings, transport: httpx.BaseTransport | None) -> Worker:
    app = build_app(settings, fhir_transport=transport)
    worker = Worker(app)
    try:
        for _ in range(5):  # a run ends when only long waits are left; go again like cron
            if worker.run_once() == 0:
                break
        return worker
    finally:
        worker.close()
        app.close()


def test_faults_change_nothing_in_the_end_state_and_retries_follow_the_policy(
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    specs = demo_studies() + bulk_studies(30, 3, patients=8, prefix="fault")
    for spec in specs:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    clean_fhir = FhirServer(tmp_path / "fhir-clean").start()
    try:
        baseline = sync_until_clean(
            make_settings(fhir_url=clean_fhir.url, state_url=f"sqlite:///{tmp_path / 'c.db'}"),
            None,
        )
        faulty = FaultyTransport()
        # In-process retries wait at most ~1 s (the 429's Retry-After); a pause at least 2.4 s.
        settings = make_settings(concurrency=4, http_retry_base=0.05, backoff_base=3.0)
        worker = sync_until_clean(settings, faulty)

        assert worker.app.store.counts("default") == {"clean": len(specs)}
        assert duplicates(fhir) == {}
        assert comparable_state(fhir) == comparable_state(clean_fhir)
    finally:
        clean_fhir.stop()

    print(f"faults injected: {dict(faulty.injected)}; requests {faulty.count} vs "
          f"{baseline.app.fhir.request_count} fault-free")  # fmt: skip
    # Every kind of fault happened, many times over.
    assert set(faulty.injected) == set(FaultyTransport.KINDS)
    assert sum(faulty.injected.values()) >= 30, faulty.injected
    # The retry policy, seen from the wire: after a 429 the same thread waited at least the
    # Retry-After; no request was sent more than `http_retries` times in a row before the
    # worker paused (a gap of 2 s or more).
    waits_after_429, longest_run = [], 0
    for sent in faulty.sent.values():
        run = 1
        for (t0, ident0, kind0), (t1, ident1, _) in itertools.pairwise(sent):
            if kind0 == "429":
                waits_after_429.append(t1 - t0)
            run = run + 1 if ident1 == ident0 and t1 - t0 < 2.0 else 1
            longest_run = max(longest_run, run)
    assert waits_after_429 and min(waits_after_429) >= 0.95, waits_after_429
    assert longest_run <= settings.http_retries
    # Faults cost retries, not a storm: bounded against the fault-free run.
    assert faulty.count <= 3 * baseline.app.fhir.request_count, (
        faulty.count,
        baseline.app.fhir.request_count,
    )
