"""A write is recorded only when it is proven: the real Orthanc and a real FHIR server
(sekmet) behind a loopback proxy that answers like Medplum's default project (empty 200s
hiding refused entries, no atomicity, a 412 inside a 200, `versioned` while If-Match is
enforced, and "exists at A" while linking B)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from dicomcast.config import Settings
from dicomcast.sandbox.samples import (
    DEMO_ISSUERS,
    SeriesSpec,
    StudySpec,
    demo_studies,
    instances,
    to_bytes,
)
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.worker import Worker
from tests.conftest import dicomcast_cli
from tests.integration.fhir_state import all_resources
from tests.medplum_like import MedplumLike

pytestmark = pytest.mark.integration
Sync = Callable[..., tuple[int, Worker]]


@pytest.fixture
def medplum(fhir: FhirServer) -> Iterator[MedplumLike]:
    with MedplumLike(fhir.url) as proxy:
        yield proxy


def upload(orthanc: OrthancServer, *specs: StudySpec) -> None:
    for spec in specs:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])


def dangling(fhir: FhirServer) -> list[str]:
    """ImagingStudies whose subject does not read as a resource on the server itself."""
    bad = []
    with fhir.client() as http:
        for study in all_resources(fhir, "ImagingStudy"):
            subject = study.get("subject", {}).get("reference", "")
            if http.get(subject).status_code != 200:
                bad.append(study["id"])
    return bad


def test_an_empty_200_hiding_a_refused_patient_is_not_recorded_synced(
    orthanc: OrthancServer, fhir: FhirServer, medplum: MedplumLike, sync_once: Sync
) -> None:
    refused, fine = demo_studies()[0], demo_studies()[3]
    family = refused.patient_name.split("^")[0]
    assert family not in fine.patient_name
    upload(orthanc, refused, fine)
    medplum.refuse_family = family
    code, worker = sync_once(fhir_url=medplum.fhir_url, max_attempts=2, once_max_wait=5)
    assert code == 1
    failures = worker.store.failures("default")
    assert [f.study_uid for f in failures] == [refused.study_uid]
    assert "validation rule" in (failures[0].error_detail or "")  # the server's own words
    assert dangling(fhir) == []  # what the refused transaction left was removed
    uids = {i["value"] for s in all_resources(fhir, "ImagingStudy") for i in s["identifier"]}
    assert f"urn:oid:{fine.study_uid}" in uids and f"urn:oid:{refused.study_uid}" not in uids

    medplum.refuse_family = None  # the rule is fixed on the server; the operator retries
    worker.store.retry("default", None)
    code, _ = sync_once(fhir_url=medplum.fhir_url)
    assert code == 0
    assert len(all_resources(fhir, "ImagingStudy")) == 2 and dangling(fhir) == []


def test_a_stale_update_inside_a_200_loses_neither_the_new_series_nor_the_ehr_edit(
    orthanc: OrthancServer, fhir: FhirServer, medplum: MedplumLike, sync_once: Sync
) -> None:
    spec = StudySpec(
        key="grows",
        patient_id="GROW1",
        patient_name="Grows^Study",
        issuer="HOSP-A",
        series=[SeriesSpec("CT", 2)],
    )
    upload(orthanc, spec)
    assert sync_once(fhir_url=medplum.fhir_url)[0] == 0
    grown = StudySpec(
        **{**spec.__dict__, "series": [SeriesSpec("CT", 2), SeriesSpec("CT", 1, number=2)]}
    )
    upload(orthanc, grown)
    # An EHR annotates the study between dicomcast's read and its write.
    medplum.ehr_edit = {"note": [{"text": "read by the EHR"}]}
    code, _ = sync_once(fhir_url=medplum.fhir_url)
    assert code == 0
    (study,) = all_resources(fhir, "ImagingStudy")
    assert len(study["series"]) == 2 and study["numberOfInstances"] == 3
    assert study.get("note") == [{"text": "read by the EHR"}]  # never overwritten
    puts = [e for _, _, entries in medplum.seen for e in entries if e["request"]["method"] == "PUT"]
    assert puts and all("ifMatch" in e["request"] for e in puts)  # learnt: enforced


def test_a_patient_said_to_exist_at_a_while_the_study_points_at_b_is_repaired(
    orthanc: OrthancServer, fhir: FhirServer, medplum: MedplumLike, sync_once: Sync
) -> None:
    spec = demo_studies()[3]
    system = DEMO_ISSUERS.get(spec.issuer or "", "")
    ehr = {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": spec.patient_id}],
        "name": [{"family": "EHR"}],
    }
    with fhir.client() as http:
        patient_a = http.post("Patient", json=ehr).json()["id"]
    upload(orthanc, spec)
    medplum.contradict = True
    # Whole answers, with a status per entry: the contradiction is in what they say.
    code, _ = sync_once(fhir_url=medplum.fhir_url, fhir_prefer_minimal=False)
    assert code == 0
    (study,) = all_resources(fhir, "ImagingStudy")
    assert study["subject"]["reference"] == f"Patient/{patient_a}"
    assert dangling(fhir) == []


def test_check_config_says_what_it_learnt_of_if_match(
    orthanc: OrthancServer,
    medplum: MedplumLike,
    make_settings: Callable[..., Settings],
    sync_once: Sync,
) -> None:
    assert sync_once(fhir_url=medplum.fhir_url)[0] == 0  # the Endpoint exists now
    checked = dicomcast_cli(make_settings(fhir_url=medplum.fhir_url), "check-config")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    fhir_line = next(line for line in checked.stdout.splitlines() if line.startswith("fhir"))
    assert "If-Match is enforced" in fhir_line
    assert (
        httpx.get(f"{medplum.fhir_url}/metadata").json()["rest"][0]["resource"][0]["versioning"]
        == "versioned"
    )
