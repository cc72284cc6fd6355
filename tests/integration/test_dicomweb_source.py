"""`DICOMCAST_SOURCE_KIND=dicomweb`: any DICOMweb archive by QIDO-RS and WADO-RS alone.
The archive is the real Orthanc's DICOMweb plugin behind a gateway that refuses its REST
API (so nothing Orthanc-specific is used), and, capped, the same gateway answering at most
N matches a search as HealthImaging's DICOMweb does."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from dicomcast.app import build_app
from dicomcast.config import Settings, load_settings
from dicomcast.sandbox.samples import demo_studies, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.sources.dicomweb import DicomwebSource
from dicomcast.worker import Worker
from tests.dicomweb_gateway import DicomwebOnly
from tests.integration.fhir_state import all_resources, comparable_state, duplicates
from tests.integration.test_dimse import ct_study, without_endpoints

pytestmark = pytest.mark.integration
Sync = Callable[..., tuple[int, Worker]]


@pytest.fixture
def gateway(orthanc: OrthancServer) -> Iterator[DicomwebOnly]:
    with DicomwebOnly(orthanc.url) as served:
        yield served


def dicomweb(gateway: DicomwebOnly, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "source_kind": "dicomweb",
        "source_url": gateway.dicomweb_url,
        "source_lookback_days": 3650,
        "source_sweep_interval": 0,
    }
    values.update({f"source_{k}": v for k, v in overrides.items()})
    return values


def test_dicomweb_alone_writes_what_the_orthanc_source_writes(
    orthanc: OrthancServer,
    fhir: FhirServer,
    gateway: DicomwebOnly,
    sync_once: Sync,
    make_settings: Callable[..., Settings],
    tmp_path: Any,
) -> None:
    for spec in demo_studies():
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    code, worker = sync_once(**dicomweb(gateway))
    assert code == 0 and worker.totals["synced"] == len(demo_studies())
    assert all(p.startswith("/dicom-web/") for p in gateway.paths)  # REST never asked
    assert duplicates(fhir) == {}
    over_dicomweb = without_endpoints(comparable_state(fhir))
    with FhirServer(tmp_path / "rest-fhir") as rest_fhir:
        settings = make_settings(fhir_url=rest_fhir.url, state_url=f"sqlite:///{tmp_path}/r.db")
        app = build_app(settings)
        try:
            assert Worker(app).run_once() == 0
        finally:
            app.close()
        assert without_endpoints(comparable_state(rest_fhir)) == over_dicomweb


def test_late_instances_deletions_and_corrections_follow_in_the_window_only(
    orthanc: OrthancServer, fhir: FhirServer, gateway: DicomwebOnly, make_settings: Any
) -> None:
    recent = ct_study("dw-recent", "20261125", 3)
    older = ct_study("dw-older", "20261110", 2)
    datasets = list(instances(recent))
    orthanc.upload([to_bytes(ds) for ds in datasets[:2]])
    orthanc.upload([to_bytes(ds) for ds in instances(older)])
    today = [dt.date(2026, 11, 30)]
    settings = make_settings(**dicomweb(gateway, lookback_days=30))

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

    def counts() -> dict[str, int]:
        return {
            s["identifier"][0]["value"]: s["numberOfInstances"]
            for s in all_resources(fhir, "ImagingStudy")
        }

    poll()
    assert counts()[f"urn:oid:{recent.study_uid}"] == 2
    orthanc.upload([to_bytes(datasets[2])])  # a late instance: the count changed
    assert poll().totals["synced"] == 1
    assert counts()[f"urn:oid:{recent.study_uid}"] == 3
    today[0] = dt.date(2026, 12, 15)  # the older study leaves the window: not gone
    assert poll().totals.get("deleted", 0) == 0 and len(counts()) == 2
    # The patient is corrected in place (UIDs and count kept): it moves to the new one.
    with orthanc.client() as http:
        [found] = http.post("/tools/lookup", content=recent.study_uid).json()
        assert http.delete(f"/studies/{found['ID']}").status_code == 200
    corrected = list(instances(recent))
    for ds in corrected:
        ds.PatientID = "DW9"
    orthanc.upload([to_bytes(ds) for ds in corrected])
    assert poll().totals["synced"] == 1
    [study] = [
        s
        for s in all_resources(fhir, "ImagingStudy")
        if s["identifier"][0]["value"] == f"urn:oid:{recent.study_uid}"
    ]
    patients = {p["id"]: p for p in all_resources(fhir, "Patient")}
    subject = patients[study["subject"]["reference"].split("/")[-1]]
    assert subject["identifier"][0]["value"] == "DW9"
    # Deleted inside the window: a search on its UID agrees, it is gone from FHIR.
    with orthanc.client() as http:
        [found] = http.post("/tools/lookup", content=recent.study_uid).json()
        assert http.delete(f"/studies/{found['ID']}").status_code == 200
    assert poll().totals["deleted"] == 1
    assert list(counts()) == [f"urn:oid:{older.study_uid}"]


def test_a_server_that_caps_its_answers_is_listed_in_halves(orthanc: OrthancServer) -> None:
    """240 studies on 240 days, a server that returns 100 matches at most a search, and
    MAX_MATCHES set to that cap: the window is asked again in halves until each answers."""
    first = dt.date(2026, 1, 1)
    specs = [
        ct_study(f"dw-cap-{n}", f"{first + dt.timedelta(days=n):%Y%m%d}", 1) for n in range(240)
    ]
    orthanc.upload([to_bytes(ds) for spec in specs for ds in instances(spec)])
    with DicomwebOnly(orthanc.url, cap=100) as capped:
        settings = load_settings(None, **dicomweb(capped, max_matches=100))
        source = DicomwebSource(settings.first_source())
        try:
            listed = source.list_studies()
        finally:
            source.close()
    assert sorted(listed) == sorted(f"{s.study_date}/{s.study_uid}" for s in specs)
