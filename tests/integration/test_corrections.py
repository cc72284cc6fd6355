"""Corrections an archive makes after the fact, end to end with the real Orthanc and
sekmet-fhir: IOCM rejection notes, and a study moved to another patient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dicomcast.sandbox.samples import (
    demo_studies,
    instances,
    rejection_note,
    to_bytes,
)
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.worker import Worker

pytestmark = pytest.mark.integration
Sync = Callable[..., tuple[int, Worker]]


def search(fhir: FhirServer, query: str) -> list[dict[str, Any]]:
    with fhir.client() as http:
        bundle = http.get(f"{query}&_count=200" if "?" in query else f"{query}?_count=200")
        return [e["resource"] for e in bundle.json().get("entry", [])]


def test_a_rejection_note_withdraws_instances_from_the_study(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    spec = next(s for s in demo_studies() if s.key == "mr-brain-doe")
    datasets = list(instances(spec))
    orthanc.upload([to_bytes(ds) for ds in datasets])
    assert sync_once()[0] == 0
    query = f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{spec.study_uid}"
    [before] = search(fhir, query)
    # Reject every instance of the first series and one of the second.
    first_series = [ds for ds in datasets if ds.SeriesInstanceUID == spec.series_uid(0)]
    other = next(ds for ds in datasets if ds.SeriesInstanceUID == spec.series_uid(1))
    orthanc.upload([to_bytes(rejection_note(spec, [*first_series, other]))])
    assert sync_once()[0] == 0
    [after] = search(fhir, query)
    assert after["id"] == before["id"]
    assert after["numberOfSeries"] == before["numberOfSeries"] - 1
    assert after["numberOfInstances"] == before["numberOfInstances"] - len(first_series) - 1
    listed = {i["uid"] for s in after["series"] for i in s["instance"]}
    assert other.SOPInstanceUID not in listed
    assert all(s["modality"]["code"] != "KO" for s in after["series"])  # the note itself
    # A rerun (and the deletion scan) changes nothing: the source's count is understood.
    code, worker = sync_once()
    assert code == 0 and worker.totals.get("synced", 0) == 0
    assert search(fhir, query)[0]["meta"]["versionId"] == after["meta"]["versionId"]


def test_a_study_moved_to_another_patient_keeps_one_imagingstudy(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    spec = next(s for s in demo_studies() if s.key == "cr-hand-yamada")
    orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    assert sync_once()[0] == 0
    query = f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{spec.study_uid}"
    [before] = search(fhir, query)
    old_subject = before["subject"]["reference"]
    # The archive corrects the PatientID, keeping the UIDs (Orthanc /modify, source deleted;
    # Orthanc changes a PatientID at patient level, and this patient has this one study).
    with orthanc.client() as http:
        study_id = http.post("/tools/lookup", content=spec.study_uid).json()[0]["ID"]
        patient_id = http.get(f"/studies/{study_id}").json()["ParentPatient"]
        answer = http.post(
            f"/patients/{patient_id}/modify",
            json={
                "Replace": {"PatientID": "MOVED-1", "PatientName": "Moved^Patient"},
                "Keep": ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
                "Force": True,
                "KeepSource": False,
            },
        )
        assert answer.status_code == 200, answer.text
    assert sync_once()[0] == 0
    [after] = search(fhir, query)  # exactly one ImagingStudy
    assert after["id"] == before["id"] and after["status"] == "available"
    new_subject = after["subject"]["reference"]
    assert new_subject != old_subject
    with fhir.client() as http:
        moved = http.get(new_subject).json()
        old = http.get(old_subject)
    assert moved["identifier"][0]["value"] == "MOVED-1"
    assert old.status_code == 200  # the old Patient is neither deleted nor changed
    assert old.json()["meta"]["versionId"] == "1"
    code, _ = sync_once()  # and it stays that way
    assert code == 0 and search(fhir, query)[0]["subject"]["reference"] == new_subject


def test_based_on_links_the_order_of_the_accession(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    ordered, unordered = demo_studies()[0], demo_studies()[1]
    assert ordered.accession_issuer_oid and ordered.accession
    system = f"urn:oid:{ordered.accession_issuer_oid}"
    order = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "identifier": [{"system": system, "value": ordered.accession}],
        "subject": {"display": "the EHR's own"},
        "code": {"text": "CT chest"},
    }
    with fhir.client() as http:
        created = http.post("ServiceRequest", json=order)
        assert created.status_code == 201, created.text
        order_id = created.json()["id"]
    for spec in (ordered, unordered):
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    assert sync_once(accession_system="urn:oid:1.2.826.0.1.3680043.8.498.77")[0] == 0
    [study] = search(fhir, f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{ordered.study_uid}")
    [link] = study["basedOn"]
    assert link["reference"] == f"ServiceRequest/{order_id}" and link["type"] == "ServiceRequest"
    assert link["identifier"]["value"] == ordered.accession
    [other] = search(fhir, f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{unordered.study_uid}")
    [logical] = other["basedOn"]  # no order on the server: a logical reference
    assert "reference" not in logical
    assert logical["identifier"] == {
        "type": logical["identifier"]["type"],
        "system": "urn:oid:1.2.826.0.1.3680043.8.498.77",
        "value": unordered.accession,
    }
