"""Real Orthanc -> dicomcast -> real sekmet-fhir: the resources and values that must land."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from dicomcast.sandbox.samples import (
    DEMO_PATIENT_SYSTEM,
    SeriesSpec,
    StudySpec,
    demo_studies,
    instances,
    to_bytes,
)
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.worker import Worker
from tests.integration.orthanc_state import settle

pytestmark = pytest.mark.integration
Sync = Callable[..., tuple[int, Worker]]
IDE = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"


def upload(orthanc: OrthancServer, *specs: StudySpec) -> None:
    for spec in specs:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])


def search(fhir: FhirServer, query: str) -> list[dict[str, Any]]:
    with fhir.client() as http:
        separator = "&" if "?" in query else "?"
        bundle = http.get(f"{query}{separator}_count=200").json()
    return [e["resource"] for e in bundle.get("entry", [])]


def study_resource(fhir: FhirServer, spec: StudySpec) -> dict[str, Any]:
    (found,) = search(fhir, f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{spec.study_uid}")
    return found


def by_key(key: str) -> StudySpec:
    return next(s for s in demo_studies() if s.key == key)


def test_demo_studies_land_with_expected_values(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    upload(orthanc, *demo_studies())
    code, worker = sync_once()
    assert code == 0
    assert worker.totals["synced"] == 7

    studies = search(fhir, "ImagingStudy")
    patients = search(fhir, "Patient")
    endpoints = search(fhir, "Endpoint")
    assert len(studies) == 7
    assert len(patients) == 4  # three patients have two studies: one Patient each
    assert len(search(fhir, "Observation")) == 3  # one per dose report
    assert len(endpoints) == 1
    assert endpoints[0]["address"] == f"{orthanc.url}/dicom-web"

    ct = study_resource(fhir, by_key("ct-chest-doe"))
    assert ct["status"] == "available"
    assert ct["identifier"][1] == {
        "use": "usual",
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]
        },
        "system": "urn:oid:1.2.826.0.1.3680043.8.498.2",
        "value": "ACC-1001",
    }
    # Study modality from the series, acquisition modalities only (the SR series is not one).
    assert [c["code"] for c in ct["modality"]] == ["CT"]
    assert ct["modality"][0]["system"] == "http://dicom.nema.org/resources/ontology/DCM"
    assert ct["started"] == "2026-01-02T09:30:15+01:00"
    assert ct["numberOfSeries"] == 3 and ct["numberOfInstances"] == 11
    assert ct["referrer"] == {"display": "Dr. Gregory House"}
    assert ct["location"] == {"display": "General Hospital"}
    assert ct["endpoint"] == [{"reference": f"Endpoint/{endpoints[0]['id']}"}]
    series = ct["series"]
    assert [s["number"] for s in series] == [1, 2, 99]
    assert series[0]["bodySite"] == {
        "system": "http://snomed.info/sct",
        "code": "51185008",
        "display": "Thorax",
    }
    assert series[2]["modality"]["code"] == "SR"
    assert series[0]["instance"][0]["sopClass"] == {
        "system": "urn:ietf:rfc:3986",
        "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2",
    }
    assert [i["number"] for i in series[0]["instance"]] == [1, 2, 3, 4, 5, 6]

    doe = search(fhir, "Patient?identifier=urn:oid:1.2.826.0.1.3680043.8.498.1|MRN1001")
    assert len(doe) == 1
    assert ct["subject"] == {"reference": f"Patient/{doe[0]['id']}"}
    assert doe[0]["name"] == [
        {
            "use": "official",
            "text": "Mr. John Q Doe Jr.",
            "family": "Doe",
            "given": ["John", "Q"],
            "prefix": ["Mr."],
            "suffix": ["Jr."],
        }
    ]
    assert doe[0]["birthDate"] == "1960-04-12" and doe[0]["gender"] == "male"

    cr = study_resource(fhir, by_key("cr-hand-yamada"))
    assert cr["started"] == "2026-05-15T08:00:00.125+09:00"
    assert cr["series"][0]["laterality"]["code"] == "7771000"
    (yamada,) = search(fhir, "Patient?identifier=urn:oid:1.2.392.200036.9116.2.6.1.48|JP-7788")
    assert [n.get("extension", [{}])[0].get("valueCode") for n in yamada["name"]] == [
        None,
        "IDE",
        "SYL",
    ]
    assert yamada["name"][1]["family"] == "山田"

    # A study time given to the hour keeps the hour; the configured zone gives the offset.
    abdomen = study_resource(fhir, by_key("ct-abdomen-muller"))
    assert abdomen["started"] == "2026-06-20T23:00:00+02:00"
    # No issuer: the default system; invalid birth date 1975-02-29 dropped, not the study.
    (garcia,) = search(fhir, f"Patient?identifier={DEMO_PATIENT_SYSTEM}|MRN2002")
    assert "birthDate" not in garcia and garcia["gender"] == "female"
    (knee,) = worker.app.store.find("default", by_key("mr-knee-garcia").study_uid)
    assert "PatientBirthDate" in (knee.warnings or "")

    cohort = search(fhir, "ImagingStudy?modality=CT&patient.birthdate=le1970-01-01")
    assert [s["description"] for s in cohort] == ["CT CHEST W CONTRAST"]


def test_second_run_changes_no_version(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    upload(orthanc, *demo_studies()[:3])
    assert sync_once()[0] == 0
    before = {r["id"]: r["meta"]["versionId"] for r in search(fhir, "ImagingStudy")}
    before |= {r["id"]: r["meta"]["versionId"] for r in search(fhir, "Patient")}
    code, worker = sync_once()
    assert code == 0
    after = {r["id"]: r["meta"]["versionId"] for r in search(fhir, "ImagingStudy")}
    after |= {r["id"]: r["meta"]["versionId"] for r in search(fhir, "Patient")}
    assert after == before
    assert worker.totals["synced"] == 0
    # Only the Endpoint lookup reaches the FHIR server: no study is read or written again.
    assert worker.app.fhir.request_count == 1


def test_state_lost_replay_creates_no_versions_or_duplicates(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync, tmp_path: Any
) -> None:
    """Even without the content hash (fresh state DB), read-merge-compare writes nothing."""
    upload(orthanc, *demo_studies()[:2])
    assert sync_once()[0] == 0
    versions = {r["id"]: r["meta"]["versionId"] for r in search(fhir, "ImagingStudy")}
    settle(orthanc)  # each study's events all logged: read in one go, each synced once
    code, worker = sync_once(state_url=f"sqlite:///{tmp_path / 'other.db'}")
    assert code == 0
    assert worker.totals["unchanged"] == 2
    assert {r["id"]: r["meta"]["versionId"] for r in search(fhir, "ImagingStudy")} == versions
    assert len(search(fhir, "Patient")) == 1


def test_new_instance_updates_counts_and_keeps_foreign_elements(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    spec = StudySpec(
        key="grow",
        patient_id="G1",
        patient_name="Grow^Ing",
        birth_date="19990101",
        series=[SeriesSpec("CT", 2, "axial")],
    )
    upload(orthanc, spec)
    assert sync_once()[0] == 0
    resource = study_resource(fhir, spec)
    assert resource["numberOfInstances"] == 2
    # Someone else (an order system) links the study to a ServiceRequest.
    resource["basedOn"] = [{"reference": "ServiceRequest/order-1"}]
    with fhir.client() as http:
        http.put(f"ImagingStudy/{resource['id']}", json=resource).raise_for_status()

    spec.series[0].instances = 3  # instance 3 arrives late
    orthanc.upload([to_bytes(list(instances(spec))[-1])])
    assert sync_once()[0] == 0
    updated = study_resource(fhir, spec)
    assert updated["numberOfInstances"] == 3
    assert len(updated["series"][0]["instance"]) == 3
    assert updated["basedOn"] == [{"reference": "ServiceRequest/order-1"}]
    assert updated["meta"]["versionId"] == "3"


def test_deleted_instance_and_study_propagate(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    keep, gone = by_key("mr-brain-doe"), by_key("cr-hand-yamada")
    upload(orthanc, keep, gone)
    assert sync_once()[0] == 0
    with orthanc.client() as http:
        # Orthanc logs no deletes: dicomcast must notice by itself.
        instance = http.post("/tools/lookup", content=keep.instance_uid(0, 1)).json()[0]["ID"]
        http.delete(f"/instances/{instance}").raise_for_status()
        study_id = http.post("/tools/lookup", content=gone.study_uid).json()[0]["ID"]
        http.delete(f"/studies/{study_id}").raise_for_status()
    code, worker = sync_once()
    assert code == 0
    assert worker.totals["deleted"] == 1
    assert study_resource(fhir, keep)["numberOfInstances"] == 9
    assert search(fhir, f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{gone.study_uid}") == []
    assert len(search(fhir, "Patient")) == 2  # Patients are never deleted by dicomcast


def test_deleted_study_entered_in_error_policy(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    spec = by_key("cr-hand-yamada")
    upload(orthanc, spec)
    assert sync_once(deleted_study_policy="entered-in-error")[0] == 0
    with orthanc.client() as http:
        study_id = http.post("/tools/lookup", content=spec.study_uid).json()[0]["ID"]
        http.delete(f"/studies/{study_id}").raise_for_status()
    assert sync_once(deleted_study_policy="entered-in-error")[0] == 0
    assert study_resource(fhir, spec)["status"] == "entered-in-error"


@pytest.mark.parametrize(
    ("policy", "expect_name", "expect_birth"),
    [
        ("fill-missing", "EHR-Name", "1960-04-12"),
        ("never", "EHR-Name", None),
        ("overwrite", "Doe", "1960-04-12"),
    ],
)
def test_ehr_patient_demographics_follow_policy(
    orthanc: OrthancServer,
    fhir: FhirServer,
    sync_once: Sync,
    policy: str,
    expect_name: str,
    expect_birth: str | None,
) -> None:
    spec = by_key("ct-chest-doe")
    ehr_patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.826.0.1.3680043.8.498.1", "value": "MRN1001"}],
        "name": [{"family": "EHR-Name", "given": ["Johnny"]}],
    }
    with fhir.client() as http:
        created = http.post("Patient", json=ehr_patient)
        created.raise_for_status()
    upload(orthanc, spec)
    assert sync_once(patient_policy=policy)[0] == 0
    (patient,) = search(fhir, "Patient")
    assert patient["name"][0]["family"] == expect_name
    assert patient.get("birthDate") == expect_birth
    assert study_resource(fhir, spec)["subject"]["reference"] == f"Patient/{patient['id']}"


def test_transaction_size_one_still_links_patient(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    spec = by_key("mr-knee-garcia")
    upload(orthanc, spec)
    assert sync_once(transaction_max_entries=1)[0] == 0
    (patient,) = search(fhir, "Patient")
    assert study_resource(fhir, spec)["subject"]["reference"] == f"Patient/{patient['id']}"


@pytest.mark.parametrize(
    "writes", ["single,conditional-create,if-match", "batch,if-match", "single"]
)
def test_every_write_mode_syncs_the_demo_into_a_real_server_without_twins(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync, writes: str, tmp_path: Any
) -> None:
    """sekmet runs each mode's requests for real: single requests with If-None-Exist and
    If-Match headers, batches of writes, and plain creates under dicomcast's locks."""
    from tests.integration.fhir_state import all_resources, duplicates, versions

    specs = demo_studies()
    upload(orthanc, *specs)
    code, worker = sync_once(fhir_writes=writes, concurrency=4)
    assert code == 0 and worker.totals["synced"] == len(specs)
    assert duplicates(fhir) == {}
    patients = {p["id"]: p for p in all_resources(fhir, "Patient")}
    assert len(patients) == len({spec.patient_id for spec in specs})
    for spec in specs:
        subject = study_resource(fhir, spec)["subject"]["reference"]
        ids = {i["value"] for i in patients[subject.split("/")[1]]["identifier"]}
        assert spec.patient_id in ids
    before = versions(fhir)
    settle(orthanc)  # each study's events all logged: read in one go, each synced once
    code, worker = sync_once(fhir_writes=writes, state_url=f"sqlite:///{tmp_path / 'again.db'}")
    assert code == 0 and worker.totals["unchanged"] == len(specs)
    assert versions(fhir) == before  # read, merged, compared: nothing written


def test_basic_auth_source(tmp_path: Any, fhir: FhirServer, make_settings: Any) -> None:
    secured = OrthancServer(tmp_path / "secured", user=("dicom", "s3cret")).start()
    try:
        upload(secured, by_key("cr-hand-yamada"))
        with httpx.Client() as http:
            assert http.get(f"{secured.url}/changes").status_code == 401
        from dicomcast.app import build_app

        settings = make_settings(
            source_url=secured.url, source_username="dicom", source_password="s3cret"
        )
        app = build_app(settings)
        worker = Worker(app)
        try:
            assert worker.run_once() == 0
        finally:
            worker.close()
            app.close()
        assert len(search(fhir, "ImagingStudy")) == 1
    finally:
        secured.stop()


def test_resync_repairs_a_hand_edited_study_and_finds_studies_the_state_never_saw(
    orthanc: OrthancServer,
    fhir: FhirServer,
    sync_once: Sync,
    make_settings: Callable[..., Any],
    tmp_path: Any,
) -> None:
    from typer.testing import CliRunner

    from dicomcast.cli import app
    from dicomcast.sandbox.environment import env_for

    spec = by_key("cr-hand-yamada")
    upload(orthanc, spec)
    assert sync_once()[0] == 0
    study = study_resource(fhir, spec)
    original = study["description"]
    with fhir.client() as http:  # someone edits an owned element by hand
        edited = {**study, "description": "edited by hand"}
        assert http.put(f"ImagingStudy/{study['id']}", json=edited).status_code == 200
    _, worker = sync_once()
    assert worker.totals["synced"] == 0  # the archive did not change: nothing written
    assert study_resource(fhir, spec)["description"] == "edited by hand"

    runner = CliRunner()
    env = env_for(make_settings())
    done = runner.invoke(app, ["resync", spec.study_uid], env=env)
    assert done.exit_code == 0, done.output
    _, worker = sync_once()
    assert worker.totals["synced"] == 1
    assert study_resource(fhir, spec)["description"] == original

    # A fresh state DB has never seen the study: resync asks Orthanc which study that is.
    fresh = env_for(make_settings(state_url=f"sqlite:///{tmp_path / 'fresh.db'}"))
    assert runner.invoke(app, ["cursor", "show"], env=fresh).exit_code == 2  # none made
    assert not (tmp_path / "fresh.db").exists()
    found = runner.invoke(app, ["resync", spec.study_uid], env=fresh)
    assert found.exit_code == 0 and found.stdout.startswith("1 studies"), found.output
    missing = runner.invoke(app, ["resync", "1.2.3.4.5.6.7"], env=fresh)
    assert missing.exit_code == 1


def test_failures_show_and_retry_take_the_uid_of_a_study_that_never_synced(
    orthanc: OrthancServer, make_settings: Any
) -> None:
    from typer.testing import CliRunner

    from dicomcast.cli import app
    from dicomcast.model import DirtyMark
    from dicomcast.sandbox.environment import env_for
    from dicomcast.state.store import StateStore

    spec = demo_studies()[0]
    upload(orthanc, spec)
    settings = make_settings()
    (orthanc_id,) = OrthancLookup(orthanc).ids(spec.study_uid)
    store = StateStore(settings.state_url)
    store.migrate()
    store.ensure_source("default", "orthanc")
    # The feed names Orthanc IDs, not UIDs: a study that failed before it ever synced has
    # no UID in the state DB. An operator still types the UID.
    store.record_page("default", "1", "1", [DirtyMark(orthanc_id, 1000.0)])
    (task,) = store.due("default", 10)
    store.finish_failed(task, "transaction: HTTP 422 (invalid)", "FhirRejected", park=True,
                        retry_at=None, http_status=422)  # fmt: skip
    store.close()
    env, runner = env_for(settings), CliRunner()
    shown = runner.invoke(app, ["failures", "show", spec.study_uid], env=env)
    assert shown.exit_code == 0, shown.output
    assert orthanc_id in shown.stdout and "HTTP 422" in shown.stdout
    retried = runner.invoke(app, ["failures", "retry", spec.study_uid], env=env)
    assert retried.exit_code == 0 and retried.stdout.startswith("1 studies"), retried.output


class OrthancLookup:
    def __init__(self, orthanc: OrthancServer) -> None:
        self.orthanc = orthanc

    def ids(self, study_uid: str) -> list[str]:
        with self.orthanc.client() as http:
            found = http.post("tools/lookup", content=study_uid).json()
        return [str(item["ID"]) for item in found if item.get("Type") == "Study"]


def test_cursor_set_head_on_a_fresh_state_starts_from_now(
    orthanc: OrthancServer,
    fhir: FhirServer,
    sync_once: Sync,
    make_settings: Callable[..., Any],
) -> None:
    from typer.testing import CliRunner

    from dicomcast.cli import app
    from dicomcast.sandbox.environment import env_for

    history, late, new = by_key("mr-brain-doe"), by_key("cr-hand-yamada"), by_key("mr-knee-garcia")
    upload(orthanc, history)
    late_instances = list(instances(late))
    orthanc.upload([to_bytes(late_instances[0])])
    runner = CliRunner()
    done = runner.invoke(app, ["cursor", "set", "head"], env=env_for(make_settings()))
    assert done.exit_code == 0, done.output
    assert "2 studies the archive holds now are recorded as seen" in done.stdout
    upload(orthanc, new)
    code, worker = sync_once()
    assert code == 0 and worker.totals["synced"] == 1  # only what came after `head`
    assert [s["description"] for s in search(fhir, "ImagingStudy")] == [new.description]
    # History is skipped, not lost: a study of it that changes is synced from then on.
    orthanc.upload([to_bytes(late_instances[1])])
    code, worker = sync_once()
    assert code == 0 and worker.totals["synced"] == 1
    assert study_resource(fhir, late)["numberOfInstances"] == 2
    assert len(search(fhir, "ImagingStudy")) == 2
