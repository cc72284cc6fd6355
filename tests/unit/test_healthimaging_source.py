"""AWS HealthImaging as a source, through the real boto3 client against a faithful fake of
the API (built from botocore's service model, SigV4 checked): the same files give the same
FHIR as a DICOMweb source, the `updatedAt` cursor loses nothing at ties or late commits,
updates, second imports and deletes reach FHIR, and throttling and refusals are outages."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dicomcast.app import build_app
from dicomcast.config import SourceSettings, load_settings
from dicomcast.errors import SourceRejected, SourceUnavailable
from dicomcast.model import DateSpan
from dicomcast.sandbox.samples import (
    DEMO_ISSUERS,
    DEMO_PATIENT_SYSTEM,
    bulk_studies,
    demo_studies,
    instances,
)
from dicomcast.sources.healthimaging import metadata
from dicomcast.sources.healthimaging.source import OVERLAP, HealthImagingSource
from dicomcast.worker import Worker
from tests.fakes import FakeSource, dicom_json
from tests.fhir_fake import FakeFhir
from tests.healthimaging_fake import HealthImagingFake
from tests.sigv4 import REGION

pytestmark = pytest.mark.usefixtures("aws_environment")


@pytest.fixture
def store() -> Iterator[HealthImagingFake]:
    with HealthImagingFake() as fake:
        yield fake


def settings_for(folder: Path, **source: Any) -> Any:
    return load_settings(
        None,
        fhir_url="http://fhir.test/fhir",
        state_url=f"sqlite:///{folder / 'state.db'}",
        patient_id_system=DEMO_PATIENT_SYSTEM,
        issuer_systems=DEMO_ISSUERS,
        timezone="Europe/Berlin",
        http_retries=1,
        backoff_base=0.05,
        backoff_max=0.2,
        http_port=0,
        **source,
    )


def source_for(store: HealthImagingFake, **options: Any) -> HealthImagingSource:
    """The source a test talks to directly, on the fake's endpoint."""
    return HealthImagingSource(
        SourceSettings(
            kind="aws-healthimaging", datastore_id=store.datastore, url=store.url, region=REGION
        ),
        **options,
    )


def listing(source: HealthImagingSource, span: DateSpan) -> list[str]:
    """Every study key a backfill would list in `span`, page after page."""
    keys: list[str] = []
    after = None
    while True:
        page = source.archive(span, after, 50)
        keys += page.keys
        after = page.after
        if after is None:
            return keys


def healthimaging_worker(folder: Path, fhir: FakeFhir, store: HealthImagingFake) -> Worker:
    """A worker built from settings alone, as an operator configures it."""
    folder.mkdir(exist_ok=True)
    settings = settings_for(
        folder,
        source_kind="aws-healthimaging",
        source_datastore_id=store.datastore,
        source_url=store.url,  # the endpoint override
    )
    return Worker(build_app(settings, fhir_transport=fhir))


def run(worker: Worker) -> None:
    try:
        assert worker.run_once() == 0
    finally:
        worker.close()
        worker.app.close()


def comparable(fhir: FakeFhir) -> dict[str, list[Any]]:
    """Patients and ImagingStudies as stored, ids, versions and Endpoints left out."""

    def scrub(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items() if k not in ("id", "meta", "endpoint")}
        if isinstance(value, list):
            return [scrub(v) for v in value]
        return value

    patients = {f"Patient/{p['id']}": p["identifier"][0]["value"] for p in fhir.all("Patient")}
    studies = []
    for study in fhir.all("ImagingStudy"):
        study = {**study, "subject": patients[study["subject"]["reference"]]}
        studies.append(scrub(study))
    return {
        "Patient": sorted(map(scrub, fhir.all("Patient")), key=repr),
        "ImagingStudy": sorted(studies, key=repr),
    }


def test_the_same_files_give_the_same_fhir_as_a_dicomweb_source(
    tmp_path: Path, store: HealthImagingFake
) -> None:
    specs = demo_studies()  # issuers, non-ASCII names, several modalities, dose reports
    for spec in specs:
        store.import_study(list(instances(spec)))
    through_aws = FakeFhir()
    run(healthimaging_worker(tmp_path / "aws", through_aws, store))
    through_dicomweb = FakeFhir()
    (tmp_path / "web").mkdir()
    source = FakeSource({spec.study_uid: dicom_json(spec) for spec in specs})
    settings = settings_for(tmp_path / "web", source_url="http://dicom.test")
    run(Worker(build_app(settings, source=source, fhir_transport=through_dicomweb)))
    assert len(through_aws.all("ImagingStudy")) == len(specs)
    assert comparable(through_aws) == comparable(through_dicomweb)
    (endpoint,) = through_aws.all("Endpoint")
    assert endpoint["address"] == (
        f"https://dicom-medical-imaging.{REGION}.amazonaws.com/datastore/{store.datastore}"
    )


def test_ties_across_pages_lose_nothing_and_read_nothing_twice(store: HealthImagingFake) -> None:
    source = source_for(store)
    at = time.time() - 3600
    specs = bulk_studies(120, 1, patients=3, prefix="tie", series=1)
    for spec in specs:  # one instant for all: more than two pages of 50
        store.import_study(list(instances(spec)), at=at)
    first = source.read_changes(None, 1000)
    assert sorted(m.study_key for m in first.marks) == sorted(s.study_uid for s in specs)
    assert first.done and source.read_changes(first.cursor, 1000).marks == []
    # Committed late: behind the cursor, within the overlap it reads again; and by limits.
    (late,) = bulk_studies(1, 1, patients=1, prefix="late", series=1)
    store.import_study(list(instances(late)), at=at - OVERLAP / 2)
    page = source.read_changes(first.cursor, 1000)
    assert [m.study_key for m in page.marks] == [late.study_uid]
    assert source.read_changes(page.cursor, 1000).marks == []
    cursor, seen = None, []
    while True:  # pages of 7: the same studies, each once
        page = source.read_changes(cursor, 7)
        seen += [m.study_key for m in page.marks]
        cursor = page.cursor
        if page.done:
            break
    assert sorted(seen) == sorted([s.study_uid for s in specs] + [late.study_uid])
    source.close()


def test_updates_second_imports_and_deletes_reach_fhir(
    tmp_path: Path, store: HealthImagingFake
) -> None:
    spec, other = bulk_studies(2, 2, patients=2, prefix="hist", series=1)
    first = store.import_study(list(instances(spec)))
    store.import_study(list(instances(other)))
    fhir = FakeFhir()
    run(healthimaging_worker(tmp_path, fhir, store))
    (study,) = [s for s in fhir.all("ImagingStudy") if spec.study_uid in repr(s["identifier"])]
    assert study["numberOfSeries"] == 1
    # A second import adds a series to the same study as a separate image set; a non-primary
    # copy of the first is left out; the study's description is corrected in both.
    (more,) = bulk_studies(1, 3, patients=1, prefix="more", series=1)
    added = [ds for ds in instances(more)]
    for ds in added:
        ds.StudyInstanceUID = spec.study_uid
        ds.PatientID, ds.PatientName = spec.patient_id, spec.patient_name
        if hasattr(ds, "IssuerOfPatientID"):
            del ds.IssuerOfPatientID
    second = store.import_study(added)
    store.import_study(list(instances(spec)), primary=False)
    for image_set in (first, second):
        store.update(image_set, "Study", {"StudyDescription": "Corrected"})
    run(healthimaging_worker(tmp_path, fhir, store))
    (study,) = [s for s in fhir.all("ImagingStudy") if spec.study_uid in repr(s["identifier"])]
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 5)
    assert study["description"] == "Corrected"
    # Deleted: gone from search, found by the reconcile scan, removed from FHIR.
    for made in list(store.image_sets.values()):
        if spec.study_uid in repr(made.document["Study"]["DICOM"]):
            store.delete(made.id)
    run(healthimaging_worker(tmp_path, fhir, store))
    (remaining,) = fhir.all("ImagingStudy")  # deleted (the default policy)
    assert other.study_uid in repr(remaining["identifier"])


def test_throttling_is_retried_by_botocore_and_a_storm_is_an_outage(
    store: HealthImagingFake,
) -> None:
    source = source_for(store)
    (spec,) = bulk_studies(1, 1, patients=1, prefix="storm", series=1)
    store.import_study(list(instances(spec)))
    store.throttle_next = 2  # botocore's standard retries ride it out
    assert [m.study_key for m in source.read_changes(None, 10).marks] == [spec.study_uid]
    store.throttle_next = 10  # longer than botocore tries: the source is unavailable
    with pytest.raises(SourceUnavailable, match="ThrottlingException") as storm:
        source.fetch_study(spec.study_uid)
    assert storm.value.outage
    store.throttle_next = 0
    assert source.check() == "AWS HealthImaging data store hospital-imaging (ACTIVE)"
    for operation in ("GetDatastore", "SearchImageSets"):
        store.denied = {operation}
        with pytest.raises(SourceUnavailable, match=f"medical-imaging:{operation}"):
            source.check()
    source.close()


def test_keyword_metadata_becomes_the_dicom_json_a_dicomweb_server_gives() -> None:
    document = {
        "Patient": {"DICOM": {"PatientName": "Yamada^Tarou=山田^太郎", "PatientBirthDate": None}},
        "Study": {
            "DICOM": {"StudyInstanceUID": "1.2.3"},
            "Series": {
                "1.2.3.4": {
                    "DICOM": {"SeriesNumber": "2 ", "Modality": "CT"},
                    "Instances": {
                        "1.2.3.4.5": {
                            "DICOM": {
                                "SOPInstanceUID": "1.2.3.4.5",
                                "SliceThickness": "2.50",
                                "Rows": 512,
                                "ImageType": ["ORIGINAL", "PRIMARY"],
                                "00091001": "vendor",
                                "ProcedureCodeSequence": [{"CodeValue": "X1"}],
                            },
                            "DICOMVRs": {"00091001": "LO"},
                        }
                    },
                }
            },
        },
    }
    (instance,) = metadata.instances(document)
    assert instance["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"}],
    }
    assert instance["00100030"] == {"vr": "DA"}  # present, empty
    assert instance["00200011"] == {"vr": "IS", "Value": [2]}
    assert instance["00180050"] == {"vr": "DS", "Value": [2.5]}
    assert instance["00280010"] == {"vr": "US", "Value": [512]}
    assert instance["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]}
    assert instance["00091001"] == {"vr": "LO", "Value": ["vendor"]}
    assert instance["00081032"]["Value"][0]["00080100"] == {"vr": "SH", "Value": ["X1"]}


def test_head_skips_the_history_and_a_backfill_lists_every_study_by_study_date(
    store: HealthImagingFake,
) -> None:
    source = source_for(store)
    made = bulk_studies(60, 1, patients=4, prefix="old", series=1)
    old = [replace(s, study_date="20250101") if n % 2 else s for n, s in enumerate(made)]
    for spec in old:
        store.import_study(list(instances(spec)), at=time.time() - 7200)
    head = source.head()
    assert source.read_changes(head, 100).marks == []  # `cursor set head`: from now on
    assert sorted(listing(source, DateSpan())) == sorted(spec.study_uid for spec in old)
    day = dt.date(2025, 1, 1)
    in_span = listing(source, DateSpan(day, day))
    assert sorted(in_span) == sorted(s.study_uid for s in old if s.study_date == "20250101")
    source.close()


def test_cursor_set_takes_head_or_an_iso_time_for_a_healthimaging_source(
    tmp_path: Path, store: HealthImagingFake
) -> None:
    from typer.testing import CliRunner

    from dicomcast.cli import app

    for spec in bulk_studies(3, 1, patients=1, prefix="cur", series=1):
        store.import_study(list(instances(spec)), at=time.time() - 7200)
    env = {
        "DICOMCAST_SOURCE_KIND": "aws-healthimaging",
        "DICOMCAST_SOURCE_DATASTORE_ID": store.datastore,
        "DICOMCAST_SOURCE_URL": store.url,
        "DICOMCAST_FHIR_URL": "http://fhir.test/fhir",
        "DICOMCAST_PATIENT_ID_SYSTEM": DEMO_PATIENT_SYSTEM,
        "DICOMCAST_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
    }
    runner = CliRunner()
    head = runner.invoke(app, ["cursor", "set", "head"], env=env)
    assert head.exit_code == 0, head.output
    assert "3 studies the archive holds now are recorded as seen" in head.stdout
    since = runner.invoke(app, ["cursor", "set", "2026-11-01T00:00:00Z"], env=env)
    assert since.exit_code == 0, since.output
    wrong = runner.invoke(app, ["cursor", "set", "yesterday"], env=env)
    assert wrong.exit_code == 2 and "give an ISO time with its zone" in wrong.output


@pytest.mark.filterwarnings("ignore:The value length")
def test_metadata_that_inflates_past_max_study_bytes_is_refused_not_read(
    store: HealthImagingFake,
) -> None:
    (spec,) = bulk_studies(1, 1, patients=1, prefix="bomb", series=1)
    datasets = list(instances(spec))
    datasets[0].StudyComments = "A" * (8 * 2**20)  # 8 MiB that gzip sends as about 8 KiB
    store.import_study(datasets)
    source = source_for(store, max_bytes=2**20)
    with pytest.raises(SourceRejected, match="larger than 1048576 bytes") as refused:
        source.fetch_study(spec.study_uid)
    assert refused.value.status == 413  # parks the study, like an HTTP source's 413
    assert source_for(store).fetch_study(spec.study_uid).view is not None  # the default bound
    source.close()
