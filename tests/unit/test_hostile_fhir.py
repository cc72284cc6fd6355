"""A hostile or broken FHIR server, on the in-memory fake: patient data it echoes back never
reaches logs, `/readyz` or `failures list`; a redirect or an HTML page is an outage, not a
bug in every study; a trickling answer is cut off at the deadline; health never waits."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dicomcast.cli import app as cli
from dicomcast.cli.worker import _source_status
from dicomcast.errors import FhirUnavailable, SourceRejected, SourceUnavailable
from dicomcast.fhir.client import _entry_status
from dicomcast.http import Bounds, send
from dicomcast.model import SourceSummary
from dicomcast.ops.health import Health
from dicomcast.ops.logging import setup_logging
from dicomcast.ops.metrics import Metrics, StateCollector
from dicomcast.sandbox.samples import DEMO_ISSUERS, bulk_studies
from dicomcast.sources.azure_positions import parse_v2_cursor
from dicomcast.sources.dimse.query import study_key
from dicomcast.worker import Worker
from tests.fakes import FakeSource, dicom_json, fake_worker
from tests.fhir_fake import FakeFhir

MRN, NAME = "ZQXJ0", "Zqxj"  # what bulk_studies(prefix="zqxj") gives the first patient


def worker_for(tmp_path: Path, fhir: FakeFhir, **overrides: Any) -> Worker:
    specs = bulk_studies(2, 2, patients=1, prefix="zqxj")
    source = FakeSource({s.study_uid: dicom_json(s) for s in specs})
    settings = {"backoff_max": 0.1, "max_attempts": 2, "once_max_wait": 0, **overrides}
    return fake_worker(tmp_path, fhir, source, **settings)


@pytest.fixture
def logs(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    setup_logging("DEBUG", "json", phi=False)
    yield capsys
    logging.getLogger().handlers.clear()


def test_patient_data_a_server_echoes_stays_out_of_logs_health_and_failures_list(
    tmp_path: Path, logs: pytest.CaptureFixture[str]
) -> None:
    fhir = FakeFhir()
    fhir.echo = True
    key = {"system": DEMO_ISSUERS["HOSP-A"], "value": MRN}
    twin = {"resourceType": "Patient", "identifier": [key]}
    fhir.resources["Patient"] = {"a": {**twin, "id": "a", "meta": {"versionId": "1"}}}
    fhir.resources["Patient"]["b"] = {**twin, "id": "b", "meta": {"versionId": "1"}}
    worker = worker_for(tmp_path, fhir, once_max_wait=5)  # through the retries
    worker.endpoints.known["http://fake.test/dicom-web"] = "Endpoint/e"
    worker.app.writer.writes.mode()  # the statement is read before the faults begin
    # A 500 and a 503 quoting our request (the Patient in it), then, for the second study,
    # two Patients that share the identifier.
    fhir.fail_next = [500, 503]
    try:
        worker.run_once()
        health = Health({}, worker, worker.pauses, worker.metrics, live_within=60)
        worker.pauses["fhir"].trip("FHIR said: Zqxj^Patient0", kind="FhirUnavailable HTTP 503")
        readyz = json.dumps(health.ready().body)
        rows = worker.store.failures("default")
    finally:
        worker.close()
        worker.app.close()
    output = logs.readouterr().err
    assert "500" in output and "503" in output  # the failures were logged...
    assert MRN not in output and NAME not in output  # ...without the patient
    assert MRN not in readyz and NAME not in readyz and "FhirUnavailable HTTP 503" in readyz
    assert rows and all(MRN not in (r.last_error or "") for r in rows)
    assert any(MRN in (r.error_detail or "") for r in rows)  # kept for `failures show`
    env = {"DICOMCAST_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"}
    for args in (["failures", "list"], ["failures", "list", "--json"]):
        listed = CliRunner().invoke(cli, args, env=env)
        assert listed.exit_code == 0 and MRN not in listed.stdout and NAME not in listed.stdout
    shown = CliRunner().invoke(cli, ["failures", "show", rows[0].study_key], env=env)
    assert MRN in shown.stdout  # the whole record, for an operator cleared to see it


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(302, headers={"Location": "https://login.example.org/"}),
        httpx.Response(200, text="<html><body>Proxy login</body></html>"),
        httpx.Response(200, json={"resourceType": "OperationOutcome"}),
    ],
    ids=["redirect", "html", "not-a-bundle"],
)
def test_a_non_fhir_answer_pauses_instead_of_parking_every_study(
    tmp_path: Path, answer: httpx.Response
) -> None:
    fhir = FakeFhir()
    fhir.fail_next = [answer] * 10
    worker = worker_for(tmp_path, fhir)
    worker.endpoints.known["http://fake.test/dicom-web"] = "Endpoint/e"
    try:
        worker.run_once()
        rows = worker.store.failures("default")
        counts = worker.store.counts("default")
    finally:
        worker.close()
        worker.app.close()
    assert counts == {"dirty": 2}  # both wait for the server; the first one tripped the pause
    assert rows and {(r.status, r.attempts, r.error_kind) for r in rows} == {
        ("dirty", 0, "FhirUnavailable")
    }
    assert worker.totals["failed"] == 0 and worker.pauses["fhir"].streak >= 1


class Trickle(httpx.SyncByteStream):
    """An answer that comes one byte every `every` seconds."""

    def __init__(self, size: int, every: float) -> None:
        self.size, self.every = size, every

    def __iter__(self) -> Iterator[bytes]:
        for _ in range(self.size):
            time.sleep(self.every)
            yield b" "


def test_a_trickling_answer_is_cut_off_at_the_deadline_and_a_huge_one_refused() -> None:
    slow = httpx.Client(
        transport=httpx.MockTransport(lambda _r: httpx.Response(200, stream=Trickle(100, 0.05)))
    )
    started = time.monotonic()
    with pytest.raises(SourceUnavailable, match=r"no full answer within 0\.3 s") as caught:
        send(slow, "GET", "http://s/x", "x", SourceUnavailable, SourceRejected,
             bounds=Bounds(deadline=0.3))  # fmt: skip
    assert caught.value.outage and time.monotonic() - started < 1.0  # not the 5 s it takes
    big = httpx.Client(
        transport=httpx.MockTransport(lambda _r: httpx.Response(200, content=b"[" * 2_000_000))
    )
    with pytest.raises(SourceRejected, match="answer over 1,000,000 bytes") as refused:
        send(big, "GET", "http://s/x", "x", SourceUnavailable, SourceRejected,
             bounds=Bounds(deadline=5, max_bytes=1_000_000))  # fmt: skip
    assert refused.value.status == 413


class Hanging:
    def summary(self, source: str) -> Any:
        time.sleep(5)
        raise AssertionError("never")


def test_health_and_metrics_answer_at_once_while_a_dependency_hangs() -> None:
    class Beat:
        progress_at = time.time()
        stopping = False

    metrics = Metrics()
    health = Health(
        {"fhir": lambda: time.sleep(5), "state": lambda: None},
        Beat(),
        {},
        metrics,
        live_within=60,
        probe_timeout=0.2,
    )
    started = time.monotonic()
    health.probe()
    report = health.ready()
    assert time.monotonic() - started < 1.0
    assert report.body["checks"] == {
        "fhir": "unavailable: no answer within 0.2 s",
        "state": "ok",
    }
    health.probe()  # the hung probe is not started twice
    assert len(health._running) == 1
    health.stop()
    collector = StateCollector(Hanging(), lambda: ["default"])
    started = time.monotonic()
    assert list(collector.collect()) == [] and time.monotonic() - started < 1.5


def test_a_server_whose_certificate_does_not_verify_says_so(tmp_path: Path) -> None:
    from tests.tls import https_server

    with https_server(tmp_path) as url:
        from dicomcast.fhir.client import FhirClient

        client = FhirClient(url)
        with pytest.raises(FhirUnavailable, match="TLS certificate verification failed"):
            client.ping()
        client.close()


def test_a_client_certificate_opens_a_mutual_tls_gateway(tmp_path: Path) -> None:
    from dicomcast.fhir.client import FhirClient
    from tests.tls import https_server, self_signed

    client_cert, client_key = self_signed(tmp_path, "client")
    with https_server(tmp_path, client_ca=client_cert) as url:
        trusted = str(tmp_path / "server-cert.pem")
        with_cert = FhirClient(url, verify=trusted, client_cert=(str(client_cert), str(client_key)))
        assert with_cert.ping() == "FHIR 4.0.1"
        with_cert.close()
        without = FhirClient(url, verify=trusted)
        with pytest.raises(FhirUnavailable, match=r"TLS|ConnectError|ReadError|RemoteProtocol"):
            without.ping()  # the gateway refuses the handshake: an outage, said as such
        without.close()


def test_a_source_behind_a_mutual_tls_gateway_presents_its_certificate(tmp_path: Path) -> None:
    from dicomcast.config import SourceSettings
    from dicomcast.errors import ConfigError, SourceUnavailable
    from dicomcast.sources.orthanc import OrthancSource
    from tests.tls import https_server, self_signed

    cert, key = self_signed(tmp_path, "client")
    with https_server(tmp_path, client_ca=cert) as url:
        trusted = str(tmp_path / "server-cert.pem")
        given = {"name": "o", "kind": "orthanc", "url": url, "tls_ca_bundle": trusted}
        with_cert = OrthancSource(SourceSettings(**given, tls_cert=str(cert), tls_key=str(key)))
        assert with_cert.rest.get("system")["fhirVersion"] == "4.0.1"  # what this server says
        with_cert.close()
        without = OrthancSource(SourceSettings(**given))
        with pytest.raises(SourceUnavailable):
            without.rest.get("system")
        without.close()
    with pytest.raises(ConfigError, match="TLS files cannot be used"):
        OrthancSource(SourceSettings(**given, tls_cert=str(tmp_path / "no.pem"), tls_key="x"))


def test_a_librarys_records_pass_the_phi_rule(capsys: pytest.CaptureFixture[str]) -> None:
    """pynetdicom dumps C-FIND identifiers at INFO and DEBUG; pydicom quotes bad values."""
    import logging

    from dicomcast.ops.logging import setup_logging

    for level in ("INFO", "DEBUG"):
        setup_logging(level, "json", phi=False)
        for name in ("pynetdicom.dsutils", "sqlalchemy.engine", "botocore.hooks", "google.auth"):
            logging.getLogger(name).setLevel(logging.DEBUG)  # as a library may set itself
            logging.getLogger(name).info("(0010,0010) PN [Yamada^Tarou] (0010,0020) [MRN-001]")
            logging.getLogger(name).debug("params: patient_id=MRN-001")
        logging.getLogger("pydicom").warning("Invalid value for VR DA: '19750229'")
        logging.getLogger("dicomcast.worker").info("study synced")
    logs = capsys.readouterr().err
    assert "study synced" in logs and "Invalid value for VR DA" in logs
    for secret in ("Yamada", "MRN-001", "19750229", "0010,0010"):
        assert secret not in logs, secret


def test_an_assigned_id_already_in_use_is_a_conflict_to_retry() -> None:
    """Medplum, under concurrent conditional creates: a race lost, not a bad resource."""
    from dicomcast.errors import FhirConflict
    from dicomcast.fhir.client import FhirClient
    from dicomcast.http import RetryPolicy

    said = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid",
                   "details": {"text": "Assigned ID is already in use"}}],
    }  # fmt: skip
    client = FhirClient(
        "http://fhir.test/fhir",
        transport=httpx.MockTransport(lambda _r: httpx.Response(400, json=said)),
        retry=RetryPolicy(attempts=1),
    )
    with pytest.raises(FhirConflict):
        client.transaction([{"request": {"method": "POST", "url": "Patient"}, "resource": {}}])


def test_digits_that_are_not_ascii_are_no_status_version_or_position() -> None:
    """`'²'.isdigit()` is True and `int('²')` raises: such text must never reach int()."""
    assert _entry_status({"response": {"status": "²01 Created"}}, missing="") == 0
    assert _source_status(SourceSummary("s", cursor="²", feed_head="9"))["lag_events"] is None
    with pytest.raises(Exception, match="not a change feed v2 position"):
        parse_v2_cursor("2026-01-01T00:00:00Z#²")
    assert study_key("\uff12\uff10\uff12\uff16\uff11\uff11\uff13\uff10", "1.2.3") == "-/1.2.3"
