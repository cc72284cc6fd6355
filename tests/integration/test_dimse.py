"""A PACS over DIMSE, for real: Orthanc's DICOM port (C-ECHO, C-FIND, C-STORE to us) and
dcmtk's `storescu`, against dicomcast's C-FIND polling and its C-STORE listener."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dicomcast.app import build_app
from dicomcast.config import Settings
from dicomcast.errors import SourceUnavailable
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.samples import (
    DEMO_ISSUERS,
    SeriesSpec,
    StudySpec,
    demo_studies,
    instances,
    to_bytes,
)
from dicomcast.sandbox.servers import FhirServer, OrthancServer, free_port
from dicomcast.sources.dimse.source import DimseSource
from dicomcast.worker import Worker
from tests.integration.fhir_state import all_resources, comparable_state, duplicates

pytestmark = pytest.mark.integration
Sync = Callable[..., tuple[int, Worker]]
NO_DELAY = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk senders: no Nagle (40 ms a message)


def dimse(orthanc: OrthancServer, **overrides: Any) -> dict[str, Any]:
    """Settings of a DIMSE source polling this Orthanc (query mode)."""
    values: dict[str, Any] = {
        "source_kind": "dimse",
        "source_url": orthanc.dicom_url,
        "source_remote_ae": "ORTHANC",
        "source_lookback_days": 3650,
        "source_sweep_interval": 0,
    }
    values.update({f"source_{k}": v for k, v in overrides.items()})
    return values


def ct_study(key: str, study_date: str, *series: int) -> StudySpec:
    """A CT study of one patient of HOSP-A, with series of these sizes."""
    return StudySpec(
        key=key,
        patient_id="DM1",
        patient_name="Dimse^Patient",
        issuer="HOSP-A",
        study_date=study_date,
        series=[SeriesSpec("CT", n, number=i + 1) for i, n in enumerate(series)],
    )


def without_endpoints(state: dict[str, list[str]]) -> dict[str, list[str]]:
    """The comparable state with every Endpoint (and reference to one) taken out."""
    out: dict[str, list[str]] = {}
    for kind in ("Patient", "ImagingStudy", "Observation"):
        bodies = [json.loads(text) for text in state[kind]]
        for body in bodies:
            body.pop("endpoint", None)
        out[kind] = sorted(json.dumps(b, sort_keys=True) for b in bodies)
    return out


def test_query_mode_writes_what_the_rest_source_writes(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync, tmp_path: Path
) -> None:
    for spec in demo_studies():
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    assert sync_once()[0] == 0  # Orthanc's REST API and DICOMweb
    rest = without_endpoints(comparable_state(fhir))
    over_dimse = FhirServer(tmp_path / "fhir-dimse").start()
    try:
        settings = dimse(orthanc)
        code, worker = sync_once(
            fhir_url=over_dimse.url, state_url=f"sqlite:///{tmp_path / 'd.db'}", **settings
        )
        assert code == 0
        assert worker.totals["synced"] == len(demo_studies())
        source = worker.app.source
        assert isinstance(source, DimseSource) and source.peer is not None
        assert source.peer.opened == source.peer.closed  # every association released
        got = without_endpoints(comparable_state(over_dimse))
        assert all_resources(over_dimse, "Endpoint") == []  # DIMSE has no FHIR Endpoint
        assert duplicates(over_dimse) == {}
    finally:
        over_dimse.stop()
    assert got == rest  # Patient, ImagingStudy and dose Observations alike


def test_query_mode_follows_late_instances_and_deletions_in_the_window_only(
    orthanc: OrthancServer, fhir: FhirServer, make_settings: Callable[..., Settings]
) -> None:
    recent = ct_study("dimse-recent", "20261125", 3)
    older = ct_study("dimse-older", "20261110", 2)
    datasets = list(instances(recent))
    orthanc.upload([to_bytes(ds) for ds in datasets[:2]])
    orthanc.upload([to_bytes(ds) for ds in instances(older)])
    today = [dt.date(2026, 11, 30)]
    settings = make_settings(**dimse(orthanc, lookback_days=30))

    def poll() -> Worker:
        worker = Worker(
            build_app(settings, adapt=lambda _c, context: replace(context, today=lambda: today[0]))
        )
        try:
            assert worker.run_once() == 0
        finally:
            worker.close()
            worker.app.close()
        return worker

    poll()
    studies = {s["identifier"][0]["value"]: s for s in all_resources(fhir, "ImagingStudy")}
    assert studies[f"urn:oid:{recent.study_uid}"]["numberOfInstances"] == 2
    # A late instance: the count C-FIND reports changed, the study is read again.
    orthanc.upload([to_bytes(datasets[2])])
    assert poll().totals["synced"] == 1
    studies = {s["identifier"][0]["value"]: s for s in all_resources(fhir, "ImagingStudy")}
    assert studies[f"urn:oid:{recent.study_uid}"]["numberOfInstances"] == 3
    # Time passes: the older study leaves the window. It is not gone.
    today[0] = dt.date(2026, 12, 15)
    assert poll().totals.get("deleted", 0) == 0
    assert len(all_resources(fhir, "ImagingStudy")) == 2
    # The recent study is deleted at the PACS, inside the window: gone from FHIR.
    with orthanc.client() as http:
        [found] = http.post("/tools/lookup", content=recent.study_uid).json()
        assert http.delete(f"/studies/{found['ID']}").status_code == 200
    assert poll().totals["deleted"] == 1
    [left] = all_resources(fhir, "ImagingStudy")
    assert left["identifier"][0]["value"] == f"urn:oid:{older.study_uid}"


def test_a_pacs_that_is_down_pauses_the_source_and_nothing_is_lost(
    orthanc: OrthancServer, fhir: FhirServer, make_settings: Callable[..., Settings]
) -> None:
    spec = demo_studies()[1]
    orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    settings = make_settings(**dimse(orthanc))
    worker = Worker(build_app(settings))
    try:
        orthanc.stop()
        with pytest.raises(SourceUnavailable, match=r"PACS ORTHANC@127\.0\.0\.1"):
            worker.run_once()
        assert all_resources(fhir, "ImagingStudy") == []
        orthanc.start()  # the same ports and database: the PACS is back
        assert worker.run_once() == 0
        assert len(all_resources(fhir, "ImagingStudy")) == 1
        source = worker.app.source
        assert isinstance(source, DimseSource) and source.peer is not None
        assert source.peer.opened == source.peer.closed
    finally:
        worker.close()
        worker.app.close()


def test_a_thousand_polls_leave_no_association_open(
    orthanc: OrthancServer, make_settings: Callable[..., Settings]
) -> None:
    orthanc.upload([to_bytes(ds) for ds in instances(demo_studies()[2])])
    source = DimseSource(make_settings(**dimse(orthanc)).first_source())
    try:
        for _ in range(1000):
            assert len(source.list_studies()) == 1
        assert source.peer is not None
        assert source.peer.opened == source.peer.closed == 1000
        assert source.finds == 1000
    finally:
        source.close()


# --- push mode: the C-STORE listener


def push_settings(make_settings: Callable[..., Settings], port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "source_kind": "dimse",
        "source_url": "",  # push only
        "source_store_port": port,
        "source_stable_age": 1,
        "poll_interval": 0.3,
        "stable_wait_max": 30,
    }
    values.update({f"source_{k}": v for k, v in overrides.items()})
    return make_settings(**values)


def start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    """`dicomcast run`, once its listener is up (the log may hold earlier runs' lines)."""
    before = log.stat().st_size if log.exists() else 0
    env = env_for(settings)
    env["DICOMCAST_LOG_FORMAT"] = "text"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomcast", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )
    port = settings.first_source().store_port
    assert port is not None
    deadline = time.monotonic() + 30
    while b"C-STORE listener up" not in log.read_bytes()[before:]:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    return proc


def sender(port: int, folder: Path, calling: str, called: str) -> list[str]:
    """dcmtk's storescu sending every file of a folder."""
    binary = shutil.which("storescu")
    assert binary, "dcmtk's storescu is missing (scripts/setup --for-tests installs dcmtk)"
    return [binary, "-aet", calling, "-aec", called, "127.0.0.1", str(port), str(folder), "+sd"]


def storescu(
    port: int, folder: Path, *, calling: str = "STORESCU", called: str = "DICOMCAST"
) -> subprocess.CompletedProcess[bytes]:
    command = sender(port, folder, calling, called)
    return subprocess.run(command, capture_output=True, timeout=120, check=False, env=NO_DELAY)


def route(pacs: OrthancServer, spec: StudySpec) -> None:
    """The PACS sends the study to dicomcast, as an auto-routing rule would."""
    with pacs.client() as http:
        [found] = http.post("/tools/lookup", content=spec.study_uid).json()
        sent = http.post("/modalities/dicomcast/store", json={"Resources": [found["ID"]]})
        assert sent.status_code == 200, sent.text


def wait_for(fhir: FhirServer, kind: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = all_resources(fhir, kind)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def test_push_mode_writes_what_was_routed_in(
    pacs: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    listener_port: int,
    tmp_path: Path,
) -> None:
    spec = demo_studies()[0]  # CT with its dose report
    pacs.upload([to_bytes(ds) for ds in instances(spec)])
    settings = push_settings(make_settings, listener_port)
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        route(pacs, spec)
        [study] = wait_for(fhir, "ImagingStudy", 1)
        assert study["numberOfInstances"] == spec.instance_count
        assert len(wait_for(fhir, "Observation", 1)) == 1  # the dose report's content came too
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    log = (tmp_path / "worker.log").read_text()
    assert spec.patient_id not in log and "Doe" not in log


def test_a_sender_not_on_the_allow_list_is_refused_and_logged(
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    listener_port: int,
    tmp_path: Path,
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    for n, ds in enumerate(instances(demo_studies()[2])):
        (files / f"{n}.dcm").write_bytes(to_bytes(ds))
    settings = push_settings(make_settings, listener_port, allowed_aes="MODALITY1")
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        refused = storescu(listener_port, files, calling="INTRUDER")
        assert refused.returncode != 0
        accepted = storescu(listener_port, files, calling="MODALITY1")
        assert accepted.returncode == 0, accepted.stderr
        assert len(wait_for(fhir, "ImagingStudy", 1)) == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    log = (tmp_path / "worker.log").read_text()
    assert "refused an association from 127.0.0.1" in log and "calling_ae=INTRUDER" in log


def test_a_crash_while_receiving_loses_nothing_the_sender_was_told_is_stored(
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    listener_port: int,
    tmp_path: Path,
) -> None:
    spec = ct_study("dimse-crash", "20261130", 120, 80)
    files = tmp_path / "files"
    files.mkdir()
    for n, ds in enumerate(instances(spec)):
        (files / f"{n:03d}.dcm").write_bytes(to_bytes(ds))
    settings = push_settings(make_settings, listener_port, stable_age=2)
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    sending = subprocess.Popen(
        sender(listener_port, files, "STORESCU", "DICOMCAST"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=NO_DELAY,
    )
    database = settings.state_url.removeprefix("sqlite:///")
    deadline = time.monotonic() + 30
    while received(database) < 40 and time.monotonic() < deadline:  # mid-transfer
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)
    sending.wait(60)
    worker = start_worker(settings, log)  # restarted; the sender sends everything again
    try:
        again = storescu(listener_port, files)
        assert again.returncode == 0, again.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = all_resources(fhir, "ImagingStudy")
            if found and found[0].get("numberOfInstances") == spec.instance_count:
                break
            time.sleep(0.3)
        [study] = all_resources(fhir, "ImagingStudy")
        assert study["numberOfInstances"] == spec.instance_count
        assert duplicates(fhir) == {}
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def pushed_copy_synced(database: str, instances: int) -> bool:
    """Every pushed instance is stored, and no study waits for a sync: the sync that
    followed the push is done."""
    with contextlib.closing(sqlite3.connect(database, timeout=5)) as db:
        try:
            waiting = db.execute("SELECT count(*) FROM studies WHERE status != 'clean'")
            return received(database) >= instances and int(waiting.fetchone()[0]) == 0
        except sqlite3.OperationalError:
            return False


def received(database: str) -> int:
    """Instances the listener stored so far (the state DB, read as it is written)."""
    with contextlib.closing(sqlite3.connect(database, timeout=5)) as db:
        try:
            return int(db.execute("SELECT count(*) FROM received_instances").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


@pytest.fixture
def dcmqrscp(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """dcmtk's dcmqrscp: a second, strict hierarchical PACS (AE title DCMQR)."""
    binary = shutil.which("dcmqrscp")
    assert binary, "dcmtk's dcmqrscp is missing (scripts/setup installs dcmtk)"
    port = free_port()
    storage = tmp_path / "dcmqr"
    storage.mkdir()
    config = tmp_path / "dcmqrscp.cfg"
    config.write_text(
        f"NetworkTCPPort = {port}\nMaxPDUSize = 16384\nMaxAssociations = 16\n"
        "HostTable BEGIN\nHostTable END\nVendorTable BEGIN\nVendorTable END\n"
        f"AETable BEGIN\nDCMQR {storage} RW (200, 1024mb) ANY\nAETable END\n"
    )
    proc = subprocess.Popen(
        [binary, "-c", str(config), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    echo = shutil.which("echoscu")
    assert echo
    while subprocess.run(
        [echo, "-aec", "DCMQR", "127.0.0.1", str(port)], capture_output=True, check=False
    ).returncode:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    yield "DCMQR", port
    proc.terminate()
    proc.wait(10)


def test_dcmqrscp_answers_enough_for_query_mode(
    dcmqrscp: tuple[str, int],
    fhir: FhirServer,
    sync_once: Sync,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    ae, port = dcmqrscp
    spec = demo_studies()[1]  # MR, two series
    files = tmp_path / "to-dcmqr"
    files.mkdir()
    for n, ds in enumerate(instances(spec)):
        (files / f"{n}.dcm").write_bytes(to_bytes(ds))
    stored = storescu(port, files, called=ae)
    assert stored.returncode == 0, stored.stderr
    settings: dict[str, Any] = {
        "source_kind": "dimse",
        "source_url": f"dicom://127.0.0.1:{port}",
        "source_remote_ae": ae,
        "source_lookback_days": 3650,
        "source_sweep_interval": 0,
        # dcmqrscp answers no issuer: the PACS's own patient-ID domain, as the README says
        "source_patient_id_system": "urn:oid:1.2.826.0.1.3680043.8.498.77",
    }
    # dcmqrscp indexes what it stored a moment later (the next poll would see it).
    probe = DimseSource(make_settings(**settings).first_source())
    deadline = time.monotonic() + 10
    while not probe.list_studies() and time.monotonic() < deadline:
        time.sleep(0.2)
    probe.close()
    code, worker = sync_once(**settings)
    assert code == 0, worker.app.store.failures("default")
    assert worker.totals["synced"] == 1, worker.totals
    [study] = all_resources(fhir, "ImagingStudy")
    assert study["numberOfSeries"] == 2 and study["numberOfInstances"] == spec.instance_count
    assert {s["modality"]["code"] for s in study["series"]} == {"MR"}
    [patient] = all_resources(fhir, "Patient")
    # It does answer IssuerOfPatientID (HOSP-A here), which places the patient ID; the
    # source's own system is for studies whose answers name no issuer.
    assert patient["identifier"][0] == {
        **patient["identifier"][0],
        "system": DEMO_ISSUERS["HOSP-A"],
        "value": spec.patient_id,
    }


def test_query_and_push_at_once_write_one_study(
    pacs: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    listener_port: int,
    tmp_path: Path,
) -> None:
    spec = demo_studies()[1]
    pacs.upload([to_bytes(ds) for ds in instances(spec)])
    settings = push_settings(
        make_settings,
        listener_port,
        url=pacs.dicom_url,
        remote_ae="ORTHANC",
        lookback_days=3650,
        sweep_interval=0,
    )
    worker = start_worker(settings, tmp_path / "worker.log")
    try:
        route(pacs, spec)
        [study] = wait_for(fhir, "ImagingStudy", 1)
        database = settings.state_url.removeprefix("sqlite:///")
        deadline = time.monotonic() + 60
        while not pushed_copy_synced(database, spec.instance_count):
            assert time.monotonic() < deadline, "the pushed copy was never synced"
            time.sleep(0.1)
        [again] = all_resources(fhir, "ImagingStudy")  # that sync changed nothing
        assert again["id"] == study["id"]
        assert again["numberOfInstances"] == spec.instance_count
        assert duplicates(fhir) == {}
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
