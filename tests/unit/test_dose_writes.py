"""Dose Observations on the FHIR server (the in-memory fake): created with their study, one
per report whatever is replayed, retired alone when their report goes, moved with the study."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from dicomcast.app import build_app
from dicomcast.config import load_settings
from dicomcast.fhir.client import FhirClient
from dicomcast.fhir.upsert import FhirWriter
from dicomcast.mapping.mapper import MappedStudy, Mappings
from dicomcast.mapping.settings import MAPPING_CONFIG_KEYS
from dicomcast.model import DeletedStudyPolicy
from dicomcast.sandbox.samples import SeriesSpec, StudySpec, instances
from dicomcast.studyview import build_study_views
from dicomcast.worker import Worker
from tests.fakes import FakeSource, dicom_json
from tests.fhir_fake import FakeFhir

MAPPINGS = Mappings.load(None, MAPPING_CONFIG_KEYS)
CONFIG: dict[str, Any] = {
    "patient_id_system": "urn:oid:1.2.3",
    "issuer_systems": {},
    "timezone": "UTC",
    "source_name": "s",
    "source_public_url": "http://s",
    "accession_system": None,
}
STUDY = StudySpec(
    key="dose-writes",
    patient_id="P1",
    patient_name="Doe^Jane",
    series=[
        SeriesSpec("CT", 2, number=1),
        SeriesSpec("SR", 1, number=98, dose="ct"),
        SeriesSpec("SR", 1, number=99, dose="xray"),
    ],
)


def writer(fake: FakeFhir, policy: DeletedStudyPolicy = "delete", entries: int = 100) -> FhirWriter:
    return FhirWriter(
        FhirClient("http://fhir.test/fhir", transport=fake),
        patient_owned=MAPPINGS.owned("Patient"),
        study_owned=MAPPINGS.owned("ImagingStudy"),
        patient_policy="fill-missing",
        deleted_policy=policy,
        max_entries=entries,
        observation_owned=MAPPINGS.owned("Observation"),
    )


def kinds(fake: FakeFhir) -> Counter[str]:
    """Requests by what they were: a transaction, a batch (of searches), a search."""
    return Counter(kind for _, kind in fake.requests)


def mapped(datasets: list[Dataset]) -> MappedStudy:
    (view,), _ = build_study_views([ds.to_json_dict() for ds in datasets])
    return MAPPINGS.map_study(view, CONFIG, None)


def test_a_new_study_and_its_dose_reports_are_created_in_one_transaction() -> None:
    fake = FakeFhir()
    result = writer(fake).upsert_study(mapped(list(instances(STUDY))), new=True)
    assert kinds(fake) == {"transaction": 1}
    observations = fake.all("Observation")
    assert len(observations) == 2
    for observation in observations:
        assert observation["subject"]["reference"] == f"Patient/{result.patient_id}"
        assert observation["partOf"][0]["reference"] == f"ImagingStudy/{result.imaging_study_id}"
        assert observation["focus"] == [{"reference": f"ImagingStudy/{result.imaging_study_id}"}]


def test_replays_leave_one_observation_per_report_unchanged() -> None:
    fake = FakeFhir()
    study = mapped(list(instances(STUDY)))
    first = writer(fake).upsert_study(study, new=True)
    versions = fake.versions()
    for _ in range(3):  # a replay, a resync, a restart (a new writer, no memory)
        again = writer(fake).upsert_study(study, study_id=first.imaging_study_id)
        assert not again.wrote
    assert fake.versions() == versions
    assert len(fake.all("Observation")) == 2
    # One batch read per replay, the study's Observations in it: nothing else.
    assert kinds(fake) == {"transaction": 1, "batch": 3}


def test_a_report_deleted_from_the_study_retires_only_its_observation() -> None:
    fake = FakeFhir()
    datasets = list(instances(STUDY))
    first = writer(fake).upsert_study(mapped(datasets), new=True)
    study_ref = f"ImagingStudy/{first.imaging_study_id}"
    someone_elses = {
        "resourceType": "Observation",
        "status": "final",
        "identifier": [{"system": "urn:oid:9.9", "value": "dose-registry-1"}],
        "code": {"text": "dose registry entry"},
        "partOf": [{"reference": study_ref}],
    }
    fake.resources["Observation"]["mine-not"] = {
        **someone_elses,
        "id": "mine-not",
        "meta": {"versionId": "1"},
    }
    ct_report = datasets[2]
    without = mapped([ds for ds in datasets if ds is not ct_report])
    result = writer(fake).upsert_study(without, study_id=first.imaging_study_id)
    assert result.wrote
    left = {o["id"]: o for o in fake.all("Observation")}
    assert "mine-not" in left  # another system's Observation of the study is not touched
    [kept] = [o for o in left.values() if o["id"] != "mine-not"]
    assert kept["identifier"][0]["value"] != f"urn:oid:{ct_report.SOPInstanceUID}"
    assert len(fake.all("ImagingStudy")) == 1 and len(fake.all("Patient")) == 1


def test_entered_in_error_marks_the_observation_of_a_deleted_report() -> None:
    fake = FakeFhir()
    datasets = list(instances(STUDY))
    first = writer(fake, "entered-in-error").upsert_study(mapped(datasets), new=True)
    ct_report = datasets[2]
    writer(fake, "entered-in-error").upsert_study(
        mapped([ds for ds in datasets if ds is not ct_report]), study_id=None
    )
    statuses = {o["identifier"][0]["value"]: o["status"] for o in fake.all("Observation")}
    assert statuses[f"urn:oid:{ct_report.SOPInstanceUID}"] == "entered-in-error"
    assert sorted(statuses.values()) == ["entered-in-error", "final"]
    # The report comes back (re-sent): its Observation is final again, still one.
    writer(fake, "entered-in-error").upsert_study(mapped(datasets), study_id=first.imaging_study_id)
    assert sorted(o["status"] for o in fake.all("Observation")) == ["final", "final"]


def test_a_removed_study_takes_its_dose_observations_first() -> None:
    fake = FakeFhir()
    study = mapped(list(instances(STUDY)))
    writer(fake).upsert_study(study, new=True)
    from dicomcast.mapping.mapper import search_token

    assert writer(fake).remove_study(search_token(study.imaging_study)) == 1
    assert fake.all("Observation") == [] and fake.all("ImagingStudy") == []
    assert len(fake.all("Patient")) == 1


def test_a_study_moved_to_another_patient_moves_its_observations() -> None:
    fake = FakeFhir()
    datasets = list(instances(STUDY))
    first = writer(fake).upsert_study(mapped(datasets), new=True)
    for ds in datasets:
        ds.PatientID = "P2"
    moved = writer(fake).upsert_study(mapped(datasets), study_id=first.imaging_study_id)
    assert moved.patient_id != first.patient_id
    subjects = {o["subject"]["reference"] for o in fake.all("Observation")}
    assert subjects == {f"Patient/{moved.patient_id}"}
    assert len(fake.all("Observation")) == 2


def test_a_server_taking_one_entry_per_transaction_gets_linked_resources() -> None:
    fake = FakeFhir()
    result = writer(fake, entries=1).upsert_study(mapped(list(instances(STUDY))), new=True)
    assert kinds(fake)["transaction"] == 4  # Patient, ImagingStudy, two Observations
    for observation in fake.all("Observation"):
        assert observation["subject"]["reference"] == f"Patient/{result.patient_id}"
        assert observation["partOf"][0]["reference"] == f"ImagingStudy/{result.imaging_study_id}"


def test_an_observation_already_there_is_merged_not_duplicated() -> None:
    fake = FakeFhir()
    study = mapped(list(instances(STUDY)))
    stale = {**study.observations[0], "valueString": "old", "id": "old", "meta": {"versionId": "1"}}
    stale["subject"] = {"reference": "Patient/elsewhere"}
    fake.resources["Observation"] = {"old": stale}
    result = writer(fake).upsert_study(study, new=True)
    observations = {o["id"]: o for o in fake.all("Observation")}
    assert len(observations) == 2
    assert observations["old"]["valueString"].startswith("CT Dose Length Product Total")
    assert observations["old"]["subject"]["reference"] == f"Patient/{result.patient_id}"


def test_two_sources_of_one_study_write_its_reports_once_and_retire_them_with_their_source(
    tmp_path: Path,
) -> None:
    every = dicom_json(STUDY)
    images = [i for i in every if i["00080060"]["Value"] != ["SR"]]
    pacs, cloud = FakeSource({STUDY.study_uid: images}, "pacs"), FakeSource({}, "cloud")
    cloud.studies[STUDY.study_uid] = every  # only the cloud copy holds the dose reports
    cloud.feed.append(STUDY.study_uid)
    settings = load_settings(
        None,
        sources=[
            {"name": "pacs", "url": "http://a.test"},
            {"name": "cloud", "url": "http://b.test"},
        ],
        fhir_url="http://fhir.test/fhir",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        patient_id_system="urn:oid:1.2.3",
        http_port=0,
    )
    fake = FakeFhir()
    worker = Worker(build_app(settings, sources=[pacs, cloud], fhir_transport=fake))
    worker.endpoints.known[FakeSource.location_.address] = "Endpoint/e"
    try:
        assert worker.run_once() == 0
        assert len(fake.all("ImagingStudy")) == 1 and len(fake.all("Observation")) == 2
        versions = fake.versions()
        assert worker.run_once() == 0 and fake.versions() == versions  # nothing new
        del cloud.studies[STUDY.study_uid]  # the cloud copy is deleted: its reports go
        assert worker.run_once() == 0
        assert fake.all("Observation") == []
        [study] = fake.all("ImagingStudy")
        assert study["numberOfInstances"] == 2  # the PACS's images stay
    finally:
        worker.close()
        worker.app.close()
