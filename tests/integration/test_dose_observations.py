"""Dose reports end to end: pydicom-built RDSRs stored with their images in the real Orthanc,
synced into the real sekmet-fhir server, searched the way a dose registry searches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicomcast.sandbox.samples import DEMO_ISSUERS, SeriesSpec, StudySpec, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.worker import Worker
from tests.azure_fake import FakeDicomService
from tests.conftest import settings_for
from tests.dose import components, quantity
from tests.fakes import dicom_json
from tests.integration.fhir_state import comparable_state
from tests.integration.test_azure_to_fhir import azure_settings, run_once

pytestmark = pytest.mark.integration
Sync = Callable[..., tuple[int, Worker]]
LOINC_DOSE = "http://loinc.org|73569-6"
HOSP_A = DEMO_ISSUERS["HOSP-A"]


def search(fhir: FhirServer, query: str) -> list[dict[str, Any]]:
    with fhir.client() as http:
        answer = http.get(f"{query}&_count=200")
        assert answer.status_code == 200, answer.text
        return [e["resource"] for e in answer.json().get("entry", [])]


def study(kind: str, modality: str, patient: str) -> StudySpec:
    return StudySpec(
        key=f"dose-it-{kind}",
        patient_id=patient,
        patient_name="Dose^Patient",
        issuer="HOSP-A",
        accession=f"ACC-{kind}",
        description=f"{modality} with dose report",
        series=[
            SeriesSpec(modality, 3, "images", number=1),
            SeriesSpec("SR", 1, "Dose report", number=99, dose=kind),
        ],
    )


def test_dose_reports_become_one_searchable_observation_each(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    specs = {
        "ct": study("ct", "CT", "DOSE-1"),
        "xray": study("xray", "XA", "DOSE-1"),
        "nm": study("nm", "NM", "DOSE-2"),
    }
    datasets = {kind: list(instances(spec)) for kind, spec in specs.items()}
    for found in datasets.values():
        orthanc.upload([to_bytes(ds) for ds in found])
    assert sync_once()[0] == 0

    # The dose registry's searches: by code and patient (chained), and by study.
    of_patient = search(fhir, f"Observation?code={LOINC_DOSE}&patient.identifier={HOSP_A}|DOSE-1")
    assert len(of_patient) == 2
    by_uid = {o["identifier"][0]["value"]: o for o in of_patient}
    observations = {}
    for kind, spec in specs.items():
        [imaging] = search(fhir, f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{spec.study_uid}")
        [observation] = search(fhir, f"Observation?part-of=ImagingStudy/{imaging['id']}")
        assert observation["subject"] == imaging["subject"]
        assert observation["status"] == "final"
        report_uid = datasets[kind][-1].SOPInstanceUID
        assert observation["identifier"][0]["value"] == f"urn:oid:{report_uid}"
        observations[kind] = observation
    assert set(by_uid) == {
        observations["ct"]["identifier"][0]["value"],
        observations["xray"]["identifier"][0]["value"],
    }

    ct = components(observations["ct"])
    assert ct["121058"]["coding"][0]["code"] == "77477000"
    assert ct["113813"] == quantity(203.12, "mGy.cm")
    assert observations["ct"]["performer"][0]["display"] == "John Moore"
    assert observations["ct"]["valueString"] == "CT Dose Length Product Total = 203.12 mGy.cm"
    xray = components(observations["xray"])
    assert xray["113725"] == quantity(0.212, "Gy")
    assert xray["113722"] == quantity(0.0013639, "Gy.m2")
    assert xray["113726"] == quantity(0.0004523, "Gy.m2")
    assert xray["113727"] == quantity(0.0009116, "Gy.m2")
    assert xray["113730"] == quantity(450, "s")
    assert xray["113731"] == 42
    nm = components(observations["nm"])
    assert nm["113507"] == quantity(154, "MBq")
    assert nm["123005"] == quantity(2.5, "cm3")
    assert nm["349358000"]["coding"][0]["code"] == "429296007"
    assert nm["89457008"]["coding"][0]["code"] == "21572004"
    assert nm["410675002"]["coding"][0]["code"] == "47625008"


def test_replays_keep_one_observation_and_deleting_the_report_removes_only_it(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync, tmp_path: Path
) -> None:
    spec = study("ct", "CT", "DOSE-3")
    datasets = list(instances(spec))
    orthanc.upload([to_bytes(ds) for ds in datasets])
    assert sync_once()[0] == 0
    [imaging] = search(fhir, f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{spec.study_uid}")
    members = f"Observation?part-of=ImagingStudy/{imaging['id']}"
    [before] = search(fhir, members)
    for n in range(3):  # the report re-sent, then the whole feed replayed by a fresh state
        orthanc.upload([to_bytes(datasets[-1])])
        assert sync_once(state_url=f"sqlite:///{tmp_path / f'replay-{n}.db'}")[0] == 0
        [again] = search(fhir, members)
        assert again["id"] == before["id"]
        assert again["meta"]["versionId"] == before["meta"]["versionId"]
    assert len(search(fhir, f"Observation?code={LOINC_DOSE}")) >= 1

    # Delete the dose report from the archive: its Observation goes, nothing else changes.
    [patient] = search(fhir, f"Patient?identifier={HOSP_A}|DOSE-3")
    with orthanc.client() as http:
        instance = http.post("/tools/lookup", content=datasets[-1].SOPInstanceUID).json()[0]
        assert http.delete(f"/instances/{instance['ID']}").status_code == 200
    assert sync_once(state_url=f"sqlite:///{tmp_path / 'replay-2.db'}")[0] == 0
    assert search(fhir, members) == []
    with fhir.client() as http:
        assert http.get(f"Observation/{before['id']}").status_code in (404, 410)
    [after] = search(fhir, f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{spec.study_uid}")
    assert after["id"] == imaging["id"] and after["numberOfInstances"] == 3
    [same_patient] = search(fhir, f"Patient?identifier={HOSP_A}|DOSE-3")
    assert same_patient["meta"]["versionId"] == patient["meta"]["versionId"]


def test_the_dicom_service_fake_gives_the_observations_orthanc_gives(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync, tmp_path: Path
) -> None:
    specs = [study("ct", "CT", "DOSE-4"), study("nm", "NM", "DOSE-4")]
    for spec in specs:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    assert sync_once(timezone="UTC")[0] == 0  # as the cloud worker's settings say
    cloud_fhir = FhirServer(tmp_path / "cloud-fhir").start()
    try:
        service = FakeDicomService()
        for spec in specs:
            service.store(dicom_json(spec))
        (tmp_path / "cloud").mkdir()
        settings = settings_for(cloud_fhir, tmp_path / "cloud", [azure_settings()])
        run_once(settings, service)
        on_prem, cloud = comparable_state(fhir), comparable_state(cloud_fhir)
    finally:
        cloud_fhir.stop()
    assert len(on_prem["Observation"]) == 2
    assert cloud["Observation"] == on_prem["Observation"]
    assert cloud["Patient"] == on_prem["Patient"]
