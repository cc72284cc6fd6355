"""The fake Microsoft DICOM service -> dicomcast -> the real sekmet-fhir server: a scripted
history across partitions ends in exactly the archive's present state, and several sources
(the real Orthanc beside the fake) write one ImagingStudy per study, the union of theirs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from dicomcast.app import build_app
from dicomcast.cli.worker import _status
from dicomcast.config import DEFAULT_PARTITION, Settings, SourceSettings
from dicomcast.errors import SourceUnavailable
from dicomcast.http import RetryPolicy
from dicomcast.sandbox.samples import (
    SeriesSpec,
    StudySpec,
    bulk_studies,
    instances,
    to_bytes,
)
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.sources.base import SourceContext
from dicomcast.worker import Worker
from tests.azure_fake import (
    CLIENT_ID,
    CLIENT_SECRET,
    SERIES_UID,
    SERVICE,
    TENANT,
    FakeDicomService,
)
from tests.conftest import settings_for
from tests.fakes import dicom_json
from tests.integration.fhir_state import all_resources, comparable_state, duplicates, versions

pytestmark = pytest.mark.integration
ALLOWED = ("alpha", "beta")
DESCRIPTION = "00081030"


def azure_settings(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "name": "cloud",
        "kind": "azure-dicom",
        "url": SERVICE,
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    values.update(overrides)
    return values


def worker_for(settings: Settings, service: FakeDicomService) -> Worker:
    """A worker whose Microsoft source talks to the fake service."""

    def on_the_fake(config: SourceSettings, context: SourceContext) -> SourceContext:
        if config.kind != "azure-dicom":
            return context
        retry = RetryPolicy(attempts=4, max_delay=10, base=0.05)
        return replace(context, transport=service.transport(), retry=retry)

    return Worker(build_app(settings, adapt=on_the_fake))


def run_once(settings: Settings, service: FakeDicomService) -> Worker:
    """`run --once`, which must end with every study clean."""
    worker = worker_for(settings, service)
    try:
        assert worker.run_once() == 0, [worker.store.failures(n) for n in worker.sources]
    finally:
        worker.close()
        worker.app.close()
    return worker


def archive_state(service: FakeDicomService) -> dict[tuple[str, str], dict[str, set[str]]]:
    """What the archive holds now, in the followed partitions: (partition, study) ->
    series -> instances."""
    state: dict[tuple[str, str], dict[str, set[str]]] = {}
    for partition, study, series, sop in service.instances:
        if partition in ALLOWED:
            state.setdefault((partition, study), {}).setdefault(series, set()).add(sop)
    return state


def fhir_studies(fhir: FhirServer) -> dict[tuple[str, str], dict[str, Any]]:
    """ImagingStudies by (partition named by the match key, StudyInstanceUID)."""
    endpoints = {f"Endpoint/{e['id']}": e["address"] for e in all_resources(fhir, "Endpoint")}
    found = {}
    for study in all_resources(fhir, "ImagingStudy"):
        first = study["identifier"][0]
        assert first["system"].startswith(f"{SERVICE}/partitions/")  # partition-scoped key
        systems = [i.get("system") for i in study["identifier"]]
        assert "urn:dicom:uid" not in systems  # it would match the unscoped study's key
        partition = first["system"].rsplit("/", 1)[1]
        uid = first["value"].removeprefix("urn:oid:")
        found[(partition, uid)] = {
            "series": {
                s["uid"]: {i["uid"] for i in s.get("instance", [])} for s in study["series"]
            },
            "counts": (study["numberOfSeries"], study["numberOfInstances"]),
            "description": study.get("description"),
            "endpoints": [endpoints[e["reference"]] for e in study["endpoint"]],
        }
    return found


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_scripted_history_across_partitions_ends_in_the_archives_state(
    fhir: FhirServer, tmp_path: Path, version: str
) -> None:
    service = FakeDicomService(partitioned=True)
    one, two, three, four = bulk_studies(4, 4, patients=2, prefix=f"hist{version}")
    service.store(dicom_json(one), "alpha")
    service.store(dicom_json(one), "beta")  # the same UID in another partition: another study
    service.store(dicom_json(two), "beta")
    service.store(dicom_json(three), "gamma")  # not followed
    service.store(dicom_json(four), "alpha")
    two_second_series = (two.study_uid, two.series_uid(1))
    new_description = {DESCRIPTION: {"vr": "LO", "Value": ["RE-READ"]}}
    service.update_study(one.study_uid, new_description, "alpha")  # a bulk update
    _, _, _, sop = next(k for k in service.instances if k[:3] == ("beta", *two_second_series))
    service.delete(two.study_uid, sop=sop, partition="beta")  # one instance
    first_series_of_two = two.series_uid(0)
    service.delete(two.study_uid, series=first_series_of_two, partition="beta")
    service.delete(four.study_uid, partition="alpha")  # created and deleted before any sync
    # Faults on the way: an expired token, throttling, a failing service.
    service.expire_tokens()
    service.fail_next(429, retry_after=0.2)
    service.fail_next(503)
    service.fail_next(500)

    sources = [azure_settings(api_version=version, partitions=list(ALLOWED))]
    settings = settings_for(fhir, tmp_path, sources)
    worker = run_once(settings, service)
    assert worker.totals["synced"] == 3 and worker.totals["deleted"] == 1

    expected = archive_state(service)
    written = fhir_studies(fhir)
    assert (
        set(written)
        == set(expected)
        == {
            ("alpha", one.study_uid),
            ("beta", one.study_uid),
            ("beta", two.study_uid),
        }
    )
    for key, series in expected.items():
        assert written[key]["series"] == series
        assert written[key]["counts"] == (len(series), sum(len(s) for s in series.values()))
        assert written[key]["endpoints"] == [f"{SERVICE}/{version}/partitions/{key[0]}"]
    assert written[("alpha", one.study_uid)]["description"] == "RE-READ"
    assert written[("beta", one.study_uid)]["description"] == one.description
    assert first_series_of_two not in written[("beta", two.study_uid)]["series"]
    with fhir.client() as http:  # a UID search in any system finds both partitions' studies
        assert http.get(f"ImagingStudy?identifier=urn:oid:{one.study_uid}").json()["total"] == 2
    assert len(all_resources(fhir, "Endpoint")) == 2
    assert len(all_resources(fhir, "Patient")) == 2
    assert duplicates(fhir) == {}

    # A deletion after the sync removes exactly that study.
    service.delete(one.study_uid, partition="beta")
    worker = run_once(settings, service)
    assert worker.totals["deleted"] == 1
    assert set(fhir_studies(fhir)) == set(archive_state(service))

    # Re-running changes nothing: no new versions anywhere.
    before, state = versions(fhir), comparable_state(fhir)
    worker = run_once(settings, service)
    assert worker.totals["synced"] == 0 and worker.totals["deleted"] == 0
    assert versions(fhir) == before and comparable_state(fhir) == state


@pytest.fixture
def two_servers(
    orthanc: OrthancServer, fhir: FhirServer, tmp_path: Path
) -> Iterator[tuple[OrthancServer, FakeDicomService, Settings]]:
    service = FakeDicomService()
    sources = [
        {"name": "pacs", "kind": "orthanc", "url": orthanc.url},
        azure_settings(),
    ]
    yield orthanc, service, settings_for(fhir, tmp_path, sources)


def spec_with(series: list[SeriesSpec]) -> StudySpec:
    return StudySpec(
        key="shared-study",
        patient_id="MRN77",
        patient_name="Shared^Pat",
        birth_date="19550505",
        issuer="HOSP-A",
        description="CT SHARED",
        series=series,
    )


def test_two_sources_write_one_study_holding_the_union_of_their_parts(
    two_servers: tuple[OrthancServer, FakeDicomService, Settings], fhir: FhirServer
) -> None:
    orthanc, service, settings = two_servers
    ct = [SeriesSpec("CT", 2, "axial", number=1), SeriesSpec("CT", 2, "coronal", number=2)]
    # The cloud copy has series 2 with one more instance, and a series 3 of its own.
    cloud_series = [ct[0], SeriesSpec("CT", 3, "coronal", number=2), SeriesSpec("MR", 2, "mr")]
    on_prem, cloud = spec_with(ct), spec_with(cloud_series)
    orthanc.upload([to_bytes(ds) for ds in instances(on_prem)])
    in_cloud = [i for i in dicom_json(cloud) if i[SERIES_UID]["Value"][0] != cloud.series_uid(0)]
    service.store(in_cloud)

    worker = run_once(settings, service)
    assert worker.totals["synced"] == 2
    (study,) = all_resources(fhir, "ImagingStudy")
    endpoints = {f"Endpoint/{e['id']}": e["address"] for e in all_resources(fhir, "Endpoint")}
    pacs, azure = f"{orthanc.url}/dicom-web", f"{SERVICE}/v2"
    assert [endpoints[e["reference"]] for e in study["endpoint"]] == [pacs, azure]
    series = {s["uid"]: s for s in study["series"]}
    where = {uid: [endpoints[e["reference"]] for e in s["endpoint"]] for uid, s in series.items()}
    s1, s2, s3 = (on_prem.series_uid(i) for i in range(3))
    assert where == {s1: [pacs], s2: [pacs, azure], s3: [azure]}
    assert len(series[s2]["instance"]) == 3  # the union of both copies' instances
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (3, 7)
    assert sorted(c["code"] for c in study["modality"]) == ["CT", "MR"]
    assert len(all_resources(fhir, "Patient")) == 1 and duplicates(fhir) == {}
    assert study["description"] == "CT SHARED"

    before = comparable_state(fhir)
    worker = run_once(settings, service)
    assert worker.totals["synced"] == 0 and comparable_state(fhir) == before

    # Gone from the on-premises archive: only the cloud's part remains.
    with orthanc.client() as http:
        for found in http.post("/tools/lookup", content=on_prem.study_uid).json():
            http.delete(f"/studies/{found['ID']}").raise_for_status()
    run_once(settings, service)
    (study,) = all_resources(fhir, "ImagingStudy")
    assert {s["uid"] for s in study["series"]} == {s2, s3}
    assert [endpoints[e["reference"]] for e in study["endpoint"]] == [azure]
    assert all("endpoint" not in s for s in study["series"])  # the study's one Endpoint says it
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 5)

    # Gone from the cloud too: no ImagingStudy left.
    service.delete(cloud.study_uid)
    run_once(settings, service)
    assert all_resources(fhir, "ImagingStudy") == []


def test_same_study_in_a_partition_stays_apart_from_other_sources(
    two_servers: tuple[OrthancServer, FakeDicomService, Settings],
    fhir: FhirServer,
    tmp_path: Path,
) -> None:
    orthanc, _, _ = two_servers
    service = FakeDicomService(partitioned=True)
    spec = spec_with([SeriesSpec("CT", 2, "axial", number=1)])
    orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    service.store(dicom_json(spec), DEFAULT_PARTITION)
    service.store(dicom_json(spec), "research")
    sources = [
        {"name": "pacs", "kind": "orthanc", "url": orthanc.url},
        azure_settings(partitions=["*"]),
    ]
    run_once(settings_for(fhir, tmp_path, sources), service)
    studies = all_resources(fhir, "ImagingStudy")
    keys = sorted(s["identifier"][0]["system"] for s in studies)
    # The default partition joins the on-premises copy; the research partition is its own.
    assert keys == [f"{SERVICE}/partitions/research", "urn:dicom:uid"]
    with fhir.client() as http:
        plain = f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{spec.study_uid}"
        assert http.get(plain).json()["total"] == 1
    shared = next(s for s in studies if s["identifier"][0]["system"] == "urn:dicom:uid")
    assert len(shared["endpoint"]) == 2


def test_status_reports_each_source(
    two_servers: tuple[OrthancServer, FakeDicomService, Settings], fhir: FhirServer
) -> None:
    orthanc, service, settings = two_servers
    spec = spec_with([SeriesSpec("CT", 1, "axial", number=1)])
    orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    service.store(dicom_json(spec))
    worker = run_once(settings, service)
    metrics = generate_latest(worker.metrics.registry).decode()
    for name in ("pacs", "cloud"):
        assert f'dicomcast_studies_total{{outcome="synced",source="{name}"}} 1.0' in metrics
        assert f'dicomcast_source_requests_total{{source="{name}",status_class="2xx"}}' in metrics
    report = _status(settings)
    names = [s["source"] for s in report["sources"]]
    assert names == ["pacs", "cloud"]
    assert all(s["studies"]["clean"] == 1 for s in report["sources"])
    cloud = report["sources"][1]
    assert cloud["cursor"].endswith("#1")  # a v2 position: the last instant and count read


def test_run_once_syncs_the_other_sources_when_one_is_down(
    two_servers: tuple[OrthancServer, FakeDicomService, Settings], fhir: FhirServer
) -> None:
    orthanc, service, settings = two_servers
    spec = spec_with([SeriesSpec("CT", 2, "axial", number=1)])
    service.store(dicom_json(spec))
    orthanc.stop()
    worker = worker_for(settings, service)
    try:
        with pytest.raises(SourceUnavailable, match="Orthanc"):
            worker.run_once()  # exit 3 from the command line, after the cloud's studies
    finally:
        worker.close()
        worker.app.close()
    assert worker.totals["synced"] == 1
    (study,) = all_resources(fhir, "ImagingStudy")
    assert study["numberOfInstances"] == 2
