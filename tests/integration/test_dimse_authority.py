"""With a PACS to query, the PACS says who a study's patient is: a push (storescu naming
any AE title) cannot re-file its study under another patient, and a patient the PACS
corrects in place (UIDs and counts kept) reaches FHIR at the next poll. Orthanc is the
PACS, for real; an instance a sender pushes again under another study leaves the first."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dicomcast.config import Settings
from dicomcast.sandbox.samples import instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from tests.integration.fhir_state import all_resources
from tests.integration.test_dimse import (
    ct_study,
    dimse,
    push_settings,
    start_worker,
    storescu,
    wait_for,
)

pytestmark = pytest.mark.integration
Sync = Callable[..., tuple[int, object]]


def patient_of_study(fhir: FhirServer) -> str:
    """The PatientID the one ImagingStudy's subject carries."""
    [study] = all_resources(fhir, "ImagingStudy")
    patients = {p["id"]: p for p in all_resources(fhir, "Patient")}
    patient = patients[study["subject"]["reference"].split("/")[-1]]
    return str(patient["identifier"][0]["value"])


def test_a_spoofed_push_cannot_refile_a_study_under_another_patient(
    pacs: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    listener_port: int,
    tmp_path: Path,
) -> None:
    spec = ct_study("authority", "20261120", 2)
    pacs.upload([to_bytes(ds) for ds in instances(spec)])
    settings = push_settings(
        make_settings,
        listener_port,
        url=pacs.dicom_url,
        remote_ae="ORTHANC",
        lookback_days=3650,
        sweep_interval=0,
    )
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        wait_for(fhir, "ImagingStudy", 1)
        assert patient_of_study(fhir) == spec.patient_id
        # Anyone naming an AE title pushes the study's own UIDs with another patient.
        forged = tmp_path / "forged"
        forged.mkdir()
        for n, ds in enumerate(instances(spec)):
            ds.PatientID, ds.PatientName = "VICTIM2", "Someone^Else"
            (forged / f"{n}.dcm").write_bytes(to_bytes(ds))
        assert storescu(listener_port, forged, calling="ANYONE").returncode == 0
        deadline = time.monotonic() + 60
        while b"pushed headers the PACS contradicts" not in log.read_bytes():
            if patient_of_study(fhir) != spec.patient_id:
                break  # re-filed: the assertion below says so
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert patient_of_study(fhir) == spec.patient_id
        assert {p["identifier"][0]["value"] for p in all_resources(fhir, "Patient")} == {
            spec.patient_id
        }
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert "VICTIM2" not in log.read_text()


def test_a_patient_corrected_in_place_at_the_pacs_reaches_fhir(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    spec = ct_study("corrected", "20261121", 2)
    orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    settings = dimse(orthanc)
    code, _ = sync_once(**settings)
    assert code == 0 and patient_of_study(fhir) == spec.patient_id
    # The PACS corrects the patient, keeping every UID (and so the instance count): as
    # Orthanc does it, the study is stored again under the corrected PatientID.
    with orthanc.client() as http:
        [found] = http.post("/tools/lookup", content=spec.study_uid).json()
        assert http.delete(f"/studies/{found['ID']}").status_code == 200
    corrected = list(instances(spec))
    for ds in corrected:
        ds.PatientID, ds.PatientName = "DM9", "Fixed^Name"
    orthanc.upload([to_bytes(ds) for ds in corrected])
    code, _ = sync_once(**settings)
    assert code == 0
    assert patient_of_study(fhir) == "DM9"


def test_an_instance_pushed_again_under_another_study_leaves_the_first(
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    listener_port: int,
    tmp_path: Path,
) -> None:
    first = ct_study("moved-from", "20261122", 2)
    second = ct_study("moved-to", "20261122", 1)
    files = tmp_path / "first"
    files.mkdir()
    datasets = list(instances(first))
    for n, ds in enumerate(datasets):
        (files / f"{n}.dcm").write_bytes(to_bytes(ds))
    worker = start_worker(push_settings(make_settings, listener_port), tmp_path / "worker.log")
    try:
        assert storescu(listener_port, files).returncode == 0
        [study] = wait_for(fhir, "ImagingStudy", 1)
        assert study["numberOfInstances"] == 2
        # The modality corrects its mistake: the second instance belongs to another study.
        moved = tmp_path / "moved"
        moved.mkdir()
        resent = datasets[1]
        resent.StudyInstanceUID = second.study_uid
        (moved / "0.dcm").write_bytes(to_bytes(resent))
        assert storescu(listener_port, moved).returncode == 0
        deadline = time.monotonic() + 60
        while True:
            counts = {
                s["identifier"][0]["value"]: s["numberOfInstances"]
                for s in all_resources(fhir, "ImagingStudy")
            }
            if counts == {f"urn:oid:{first.study_uid}": 1, f"urn:oid:{second.study_uid}": 1}:
                break
            assert time.monotonic() < deadline, counts
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
