"""AWS HealthImaging (a faithful fake called by the real boto3) and the real Orthanc into the
real sekmet-fhir: a scripted history of imports, a second import, a metadata update,
throttling storms and deletions ends in exactly the archives' state; a re-run writes
nothing; and one study held in parts by both archives is one ImagingStudy, their union."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomcast.app import build_app
from dicomcast.config import Settings
from dicomcast.errors import SourceUnavailable
from dicomcast.sandbox.samples import (
    SeriesSpec,
    StudySpec,
    bulk_studies,
    demo_studies,
    instances,
    to_bytes,
)
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.worker import Worker
from tests.conftest import settings_for
from tests.healthimaging_fake import HealthImagingFake
from tests.integration.fhir_state import (
    all_resources,
    comparable_state,
    duplicates,
    first_identifier,
    versions,
)
from tests.sigv4 import REGION

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("aws_environment")]


@pytest.fixture
def store() -> Iterator[HealthImagingFake]:
    with HealthImagingFake() as fake:
        yield fake


def aws(store: HealthImagingFake) -> dict[str, Any]:
    return {
        "name": "aws",
        "kind": "aws-healthimaging",
        "datastore_id": store.datastore,
        "url": store.url,
        "region": REGION,
    }


def run_once(settings: Settings) -> Worker:
    for _ in range(5):  # a storm ends a run as an outage; go again, as cron would
        worker = Worker(build_app(settings))
        try:
            if worker.run_once() == 0:
                break
        except SourceUnavailable as exc:
            assert exc.outage
        finally:
            worker.close()
            worker.app.close()
    assert all(worker.store.counts(n).keys() <= {"clean"} for n in worker.sources)
    return worker


def studies(fhir: FhirServer) -> dict[str, dict[str, Any]]:
    return {first_identifier(s).split(":")[-1]: s for s in all_resources(fhir, "ImagingStudy")}


def test_a_scripted_history_ends_in_the_data_stores_state(
    store: HealthImagingFake, fhir: FhirServer, tmp_path: Path
) -> None:
    settings = settings_for(fhir, tmp_path, [aws(store)])
    first, second, third = bulk_studies(3, 2, patients=2, prefix="hist", series=1)
    kept = store.import_study(list(instances(first)))
    doomed = store.import_study(list(instances(second)))
    run_once(settings)
    assert set(studies(fhir)) == {first.study_uid, second.study_uid}

    # A second import adds a series to the first study; an update corrects its
    # description; the second study is deleted; a new one arrives in a throttling storm.
    (extra,) = bulk_studies(1, 3, patients=1, prefix="extra", series=1)
    added = list(instances(extra))
    for ds in added:
        ds.StudyInstanceUID = first.study_uid
        ds.PatientID, ds.PatientName = first.patient_id, first.patient_name
        ds.IssuerOfPatientID = first.issuer
    more = store.import_study(added)
    for image_set in (kept, more):
        store.update(image_set, "Study", {"StudyDescription": "CORRECTED"})
    store.delete(doomed)
    store.import_study(list(instances(third)))
    store.throttle_next = 12  # more than botocore's retries: an outage, then a pause
    run_once(settings)
    synced = studies(fhir)
    assert set(synced) == {first.study_uid, third.study_uid}
    study = synced[first.study_uid]
    assert (study["numberOfSeries"], study["numberOfInstances"], study["description"]) == (
        2,
        5,
        "CORRECTED",
    )
    assert duplicates(fhir) == {}
    before = versions(fhir)
    (tmp_path / "fresh").mkdir()
    run_once(settings_for(fhir, tmp_path / "fresh", [aws(store)]))  # state lost: read all
    assert versions(fhir) == before  # read, merged, compared: nothing written


def test_healthimaging_and_orthanc_holding_parts_of_one_study_make_one_imaging_study(
    store: HealthImagingFake, orthanc: OrthancServer, fhir: FhirServer, tmp_path: Path
) -> None:
    series = [SeriesSpec("CT", 2, "axial", number=1), SeriesSpec("CT", 3, "coronal", number=2)]
    spec = StudySpec(
        key="split-study",
        patient_id="MRN88",
        patient_name="Split^Pat",
        birth_date="19600606",
        issuer="HOSP-A",
        description="CT SPLIT",
        series=series,
    )
    datasets = list(instances(spec))
    first_series = spec.series_uid(0)
    orthanc.upload([to_bytes(ds) for ds in datasets if ds.SeriesInstanceUID == first_series])
    store.import_study([ds for ds in datasets if ds.SeriesInstanceUID != first_series])
    settings = settings_for(fhir, tmp_path, [{"name": "pacs", "url": orthanc.url}, aws(store)])
    run_once(settings)
    (study,) = all_resources(fhir, "ImagingStudy")
    endpoints = {f"Endpoint/{e['id']}": e["address"] for e in all_resources(fhir, "Endpoint")}
    cloud = f"https://dicom-medical-imaging.{REGION}.amazonaws.com/datastore/{store.datastore}"
    assert [endpoints[e["reference"]] for e in study["endpoint"]] == [
        f"{orthanc.url}/dicom-web",
        cloud,
    ]
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 5)
    assert len(all_resources(fhir, "Patient")) == 1 and duplicates(fhir) == {}


def test_the_same_files_give_the_same_fhir_through_healthimaging_as_through_orthanc(
    store: HealthImagingFake, orthanc: OrthancServer, fhir: FhirServer, tmp_path: Path
) -> None:
    specs = demo_studies()  # issuers, non-ASCII names, five modalities, dose reports
    for spec in specs:
        datasets = list(instances(spec))
        orthanc.upload([to_bytes(ds) for ds in datasets])
        store.import_study(datasets)
    (tmp_path / "aws").mkdir()
    run_once(settings_for(fhir, tmp_path / "aws", [aws(store)]))
    other = FhirServer(tmp_path / "fhir-orthanc").start()
    try:
        (tmp_path / "pacs").mkdir()
        run_once(settings_for(other, tmp_path / "pacs", [{"name": "aws", "url": orthanc.url}]))
        assert len(all_resources(fhir, "ImagingStudy")) == len(specs)
        assert without_endpoints(fhir) == without_endpoints(other)
    finally:
        other.stop()


def without_endpoints(fhir: FhirServer) -> dict[str, list[Any]]:
    """What the server holds, Endpoints and the references to them left out."""

    def drop(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k != "endpoint"}
        if isinstance(value, list):
            return [drop(v) for v in value]
        return value

    state = comparable_state(fhir)
    return {
        kind: sorted((drop(json.loads(line)) for line in lines), key=repr)
        for kind, lines in state.items()
        if kind != "Endpoint"
    }
