"""A hostile or broken DICOM archive, on a programmable fake Orthanc (and DICOM service): bad
feed entries are skipped and recorded while the feed goes on, a page that keeps failing is
shown and then stepped past, a position past the feed's head is never followed, and a UID
that is a path is never requested nor taken for a deletion."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomcast.app import build_app
from dicomcast.config import SourceSettings, load_settings
from dicomcast.errors import SourceRejected
from dicomcast.http import RetryPolicy
from dicomcast.ops import listener as listener_module
from dicomcast.ops.health import Health
from dicomcast.ops.metrics import Metrics
from dicomcast.sandbox.samples import DEMO_ISSUERS
from dicomcast.sources.azure import AzureDicomSource
from dicomcast.sources.orthanc import OrthancSource
from dicomcast.sync.feed import FeedFailing
from dicomcast.worker import Worker
from tests.fhir_fake import FakeFhir

TRAVERSAL = "1.2.3/../../../../admin/secret"
Answer = Callable[[httpx.Request], httpx.Response | None]


class FakeOrthanc(httpx.MockTransport):
    """Answers from `routes` (path -> JSON, or a function of the request); 404 otherwise.
    Every request's path is kept in `seen`."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = {"/dicom-web/studies": [], **routes}  # its DICOMweb plugin is loaded
        self.seen: list[str] = []
        super().__init__(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.url.path)
        route = self.routes.get(request.url.path)
        if callable(route):
            answer = route(request)
            return (
                answer if isinstance(answer, httpx.Response) else httpx.Response(200, json=answer)
            )
        if route is None:
            return httpx.Response(404)
        return httpx.Response(200, json=route)


@pytest.fixture
def worker_on(tmp_path: Path) -> Iterator[Callable[[FakeOrthanc], Worker]]:
    made: list[Worker] = []

    def make(orthanc: FakeOrthanc) -> Worker:
        settings = load_settings(
            None,
            source_url="http://orthanc.test",
            fhir_url="http://fhir.test/fhir",
            state_url=f"sqlite:///{tmp_path / 'state.db'}",
            patient_id_system="urn:oid:1.2.3",
            issuer_systems=DEMO_ISSUERS,
            http_retries=1,
            once_max_wait=0,
            http_port=0,
        )
        worker = Worker(
            build_app(
                settings,
                fhir_transport=FakeFhir(),
                adapt=lambda _config, context: replace(
                    context, transport=orthanc, retry=RetryPolicy(attempts=1)
                ),
            )
        )
        worker.endpoints.known["http://orthanc.test/dicom-web"] = "Endpoint/e"
        worker.store.ensure_source("default", "orthanc")
        assert worker.hold_source()
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()
        worker.app.close()


def change(seq: Any, kind: str = "StableStudy", rid: Any = "s1", resource: str = "Study") -> Any:
    return {"Seq": seq, "ChangeType": kind, "ID": rid, "ResourceType": resource}


def test_bad_entries_are_skipped_and_recorded_and_the_feed_moves_on(
    worker_on: Callable[[FakeOrthanc], Worker],
) -> None:
    page = {
        "Changes": [
            change(1),
            change("²"),  # str.isdigit() says yes; int() says no
            change("9" * 4300),  # too long for int() at all
            change(3, "NewSeries", "bad-series", "Series"),  # read past, never looked up
            change(4, "NewSeries", "../admin", "Series"),  # not an Orthanc ID
            change(5, rid="../../admin"),  # not an Orthanc ID
            change(10**17, rid="s2"),  # past the feed's own head
            change(6, rid="s3"),
        ],
        "Last": 6,
        "Done": True,
    }
    orthanc = FakeOrthanc({"/changes": page})
    worker = worker_on(orthanc)
    assert worker.tail() == 2  # s1 and s3
    assert worker.store.cursor("default") == "6"
    skips = worker.store.feed_skips("default")
    assert len(skips) == 5
    reasons = " | ".join(f"{s.position}: {s.reason}" for s in skips)
    assert "without a valid Seq" in reasons and "beyond the feed's head 6" in reasons
    assert reasons.count("without a valid Orthanc ID") == 2
    assert worker.store.summary("default").feed_skips == 5
    assert worker.metrics.feed_skipped.labels("default")._value.get() == 5
    assert not [p for p in orthanc.seen if p.startswith("/series")]
    assert not [p for p in orthanc.seen if "admin" in p]


def test_a_page_that_keeps_failing_is_shown_then_stepped_past(
    worker_on: Callable[[FakeOrthanc], Worker],
) -> None:
    nested = "[" * 100_000 + "]" * 100_000  # valid JSON no parser here will descend into

    def changes(request: httpx.Request) -> httpx.Response:
        since = int(request.url.params["since"])
        if since < 5:
            body = {"Changes": [change(5, rid="s5")], "Last": 5, "Done": False}
            return httpx.Response(200, json=body)
        if since == 5:
            return httpx.Response(200, content=nested.encode())
        return httpx.Response(200, json={"Changes": [change(7, rid="s7")], "Last": 7, "Done": True})

    system: dict[str, Any] = {"answer": httpx.Response(503)}
    orthanc = FakeOrthanc({"/changes": changes, "/system": lambda _r: system["answer"]})
    worker = worker_on(orthanc)
    # The page fails, again, and again; one entry at a time it still fails, and the
    # archive fails its health probe too: an outage. Nothing is skipped; /readyz shows it.
    worker.tail(strict=False)
    assert worker.store.cursor("default") == "5" and worker.store.feed_skips("default") == []
    assert worker.pauses["source:default"].active()
    with pytest.raises(FeedFailing):
        worker.feed.check("default")
    assert worker.metrics.feed_failing.labels("default")._value.get() == 1
    # The archive answers again: the entry that cannot be read is stepped past, recorded.
    system["answer"] = httpx.Response(200, json={"Version": "1.12"})
    worker.pauses["source:default"].clear()
    worker.tail(strict=False)
    assert worker.store.cursor("default") == "7"
    assert worker.store.counts("default") == {"dirty": 2}  # s5 and s7
    (skip,) = worker.store.feed_skips("default")
    assert skip.position == "6" and "could not be read" in skip.reason
    worker.feed.check("default")  # reading again
    assert worker.metrics.feed_failing.labels("default")._value.get() == 0


def test_run_once_goes_past_a_poison_page(worker_on: Callable[[FakeOrthanc], Worker]) -> None:
    def changes(request: httpx.Request) -> httpx.Response:
        since = int(request.url.params["since"])
        if since == 0:
            return httpx.Response(200, content=b"{" * 50_000)  # not JSON
        later = [change(2, rid="s2")] if since < 2 else []
        return httpx.Response(200, json={"Changes": later, "Last": 2, "Done": True})

    orthanc = FakeOrthanc({"/changes": changes, "/system": {"Version": "1.12"}, "/series": []})
    worker = worker_on(orthanc)
    worker.run_once()  # a backfill is not stopped by one bad page
    assert worker.store.cursor("default") == "2"
    assert [s.position for s in worker.store.feed_skips("default")] == ["1"]


def test_an_outage_is_never_stepped_past(worker_on: Callable[[FakeOrthanc], Worker]) -> None:
    orthanc = FakeOrthanc({"/changes": lambda _r: httpx.Response(503)})
    worker = worker_on(orthanc)
    for _ in range(6):
        worker.pauses["source:default"].clear()
        worker.tail(strict=False)
    assert worker.store.cursor("default") is None and worker.store.feed_skips("default") == []


def test_a_uid_that_is_a_path_is_refused_never_requested_nor_taken_for_a_deletion(
    worker_on: Callable[[FakeOrthanc], Worker],
) -> None:
    orthanc = FakeOrthanc(
        {
            "/changes": {"Changes": [change(1, rid="s1")], "Last": 1, "Done": True},
            "/studies/s1": {
                "MainDicomTags": {"StudyInstanceUID": "1.2.3/../../../../admin/secret"}
            },
        }
    )
    worker = worker_on(orthanc)
    worker.tail()
    assert worker.sync_round(wait_for_stable=False).outcomes == {"failed": 1}
    (row,) = worker.store.failures("default")
    assert (row.status, row.error_kind) == ("failed", "MappingError")
    assert "not a valid DICOM UID" in (row.last_error or "")
    assert not [p for p in orthanc.seen if "admin" in p]


def test_a_change_feed_v2_entry_from_the_future_is_not_followed() -> None:
    now = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 60))
    entries = [
        {"Sequence": 1, "StudyInstanceUid": "1.2.3", "Timestamp": f"{now}.1234567Z"},
        {"Sequence": 2, "StudyInstanceUid": "1.2.4", "Timestamp": "9999-12-31T00:00:00Z"},
    ]
    service = httpx.MockTransport(lambda _r: httpx.Response(200, json=entries))
    settings = SourceSettings(name="cloud", kind="azure-dicom", url="https://dicom.test")
    page = AzureDicomSource(settings, transport=service).read_changes(None, 100)
    assert page.cursor.startswith(now) and page.done
    assert [m.study_key for m in page.marks] == ["Microsoft.Default/1.2.3"]
    assert [s.reason for s in page.skipped] == ["Timestamp in the future; not followed"]


def test_the_listener_queues_bursts_and_drops_idle_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listener_module, "IDLE_TIMEOUT", 0.5)

    class Beat:
        progress_at = time.time()
        stopping = False

    health = Health({}, Beat(), {}, Metrics(), live_within=60)
    listener = listener_module.Listener(health, "127.0.0.1", 0).start()
    try:
        assert listener.server.request_queue_size >= 50
        idle = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
        time.sleep(1.2)
        assert idle.recv(1) == b""  # the server closed it
        idle.close()
        with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as live:
            live.sendall(b"GET /livez HTTP/1.0\r\n\r\n")
            answer = b"".join(iter(lambda: live.recv(4096), b"")).decode()  # to its close
        assert answer.startswith("HTTP/1.0 200") and json.loads(answer.split("\r\n\r\n")[1])
    finally:
        listener.stop()


def test_an_oversized_study_or_element_is_refused_with_the_reason(tmp_path: Path) -> None:
    from dicomcast.mapping.settings import load_mappings, mapping_config
    from dicomcast.sandbox.samples import demo_studies
    from dicomcast.studyview import build_study_views
    from tests.fakes import dicom_json

    instances = dicom_json(demo_studies()[4])
    instances[0]["00081030"] = {"vr": "LO", "Value": ["x" * 200_000]}  # StudyDescription
    settings = load_settings(None, patient_id_system="urn:oid:1.2.3", issuer_systems=DEMO_ISSUERS)
    (view,), _ = build_study_views(instances)
    mapped = load_mappings(settings).map_study(view, mapping_config(settings), "Endpoint/e")
    assert "description" not in mapped.imaging_study
    assert any("StudyDescription" in w and "dropped: 200,000 characters" in w
               for w in mapped.warnings)  # fmt: skip

    body = json.dumps(instances * 40)  # well over the bound set below
    orthanc = FakeOrthanc(
        {
            "/studies/s1": {"MainDicomTags": {"StudyInstanceUID": view.uid}},
            f"/dicom-web/studies/{view.uid}/metadata": lambda _r: httpx.Response(
                200, content=body.encode()
            ),
        }
    )
    source = OrthancSource(
        load_settings(None, source_url="http://o.test").first_source(),
        transport=orthanc,
        max_bytes=100_000,
    )
    with pytest.raises(SourceRejected, match="answer over 100,000 bytes"):
        source.fetch_study("s1")
