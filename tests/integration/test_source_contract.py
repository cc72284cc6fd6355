"""What every kind of source promises the worker, run against each kind alike (as meltano's
standard tap tests run against every tap): on the real Orthanc for the kinds that can follow
it (its REST API and `/changes`, its DICOMweb alone, its DICOM port over C-FIND) and on the
wire-format fakes where no server can run here (the Microsoft DICOM service, HealthImaging).

A new kind joins by adding an `Archive` below: something to put studies in and take them
out of, and the settings that follow it. The sources are built by the registry, as the
worker builds them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from pydicom.dataset import Dataset

from dicomcast.config import SourceSettings
from dicomcast.errors import OperatorError, StoredValueError
from dicomcast.http import RetryPolicy
from dicomcast.model import DateSpan
from dicomcast.sandbox.samples import SeriesSpec, StudySpec, instances, to_bytes
from dicomcast.sandbox.servers import OrthancServer
from dicomcast.sources import registry
from dicomcast.sources.base import (
    ArchiveListing,
    ChangeFeed,
    Source,
    SourceContext,
    StudyListing,
    logs_deletes,
)
from tests.azure_fake import SERVICE, FakeDicomService
from tests.dicomweb_gateway import DicomwebOnly
from tests.healthimaging_fake import HealthImagingFake

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("aws_environment")]
FAST = RetryPolicy(attempts=2, max_delay=1, base=0.01)
RECENT = f"{dt.date.today() - dt.timedelta(days=5):%Y%m%d}"  # inside every listing window


class Archive(Protocol):
    """A place studies are put in and taken out of, and the source that follows it."""

    def put(self, datasets: list[Dataset]) -> None: ...

    def remove(self, study_uid: str) -> None: ...

    def config(self) -> SourceSettings: ...

    def source(self) -> Source: ...


class OrthancArchive:
    """The real Orthanc, followed as `kind` (orthanc, dicomweb through a gateway that
    hides its REST API, or dimse on its DICOM port)."""

    def __init__(self, server: OrthancServer, kind: str, gateway: DicomwebOnly) -> None:
        self.server, self.kind, self.gateway = server, kind, gateway

    def put(self, datasets: list[Dataset]) -> None:
        self.server.upload([to_bytes(ds) for ds in datasets])

    def remove(self, study_uid: str) -> None:
        with self.server.client() as client:
            found = client.post("/tools/lookup", content=study_uid).json()
            for match in found:
                client.delete(f"/studies/{match['ID']}").raise_for_status()

    def config(self) -> SourceSettings:
        window: dict[str, Any] = {"lookback_days": 3650, "sweep_interval": 0}
        settings: dict[str, Any] = {
            "orthanc": {"url": self.server.url},
            "dicomweb": {"url": self.gateway.dicomweb_url, **window},
            "dimse": {"url": self.server.dicom_url, "remote_ae": "ORTHANC", **window},
        }[self.kind]
        return SourceSettings(kind=self.kind, timeout=10, **settings)

    def source(self) -> Source:
        return registry.build(self.config(), SourceContext(retry=FAST))


class AzureArchive:
    """The Microsoft DICOM service's documented API, in memory."""

    def __init__(self) -> None:
        self.service = FakeDicomService(require_auth=False)

    def put(self, datasets: list[Dataset]) -> None:
        self.service.store([dicom_json_of(ds) for ds in datasets])

    def remove(self, study_uid: str) -> None:
        self.service.delete(study_uid)

    def config(self) -> SourceSettings:
        return SourceSettings(kind="azure-dicom", url=SERVICE)

    def source(self) -> Source:
        context = SourceContext(transport=self.service.transport(), retry=FAST)
        return registry.build(self.config(), context)


class HealthImagingArchive:
    """One HealthImaging data store, from botocore's own service model, on a loopback port."""

    def __init__(self, fake: HealthImagingFake) -> None:
        self.fake = fake
        self.image_sets: dict[str, list[str]] = {}

    def put(self, datasets: list[Dataset]) -> None:
        made = self.fake.import_study(datasets)
        self.image_sets.setdefault(str(datasets[0].StudyInstanceUID), []).append(made)

    def remove(self, study_uid: str) -> None:
        for image_set in self.image_sets.pop(study_uid, []):
            self.fake.delete(image_set)

    def config(self) -> SourceSettings:
        return SourceSettings(
            kind="aws-healthimaging", datastore_id=self.fake.datastore, url=self.fake.url
        )

    def source(self) -> Source:
        return registry.build(self.config(), SourceContext())


def dicom_json_of(ds: Dataset) -> dict[str, Any]:
    return dict(ds.to_json_dict())


KINDS = ["orthanc", "dicomweb", "dimse", "azure-dicom", "aws-healthimaging"]


@pytest.fixture(scope="module")
def orthanc_archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """One Orthanc for the three kinds that follow it: each test's studies are its own."""
    server = OrthancServer(Path(tmp_path_factory.mktemp("orthanc"))).start()
    yield server
    server.discard()


@pytest.fixture(scope="module")
def gateway(orthanc_archive: OrthancServer) -> Iterator[DicomwebOnly]:
    with DicomwebOnly(orthanc_archive.url) as relay:
        yield relay


@pytest.fixture(params=KINDS)
def archive(
    request: pytest.FixtureRequest, orthanc_archive: OrthancServer, gateway: DicomwebOnly
) -> Iterator[Archive]:
    kind: str = request.param
    if kind == "azure-dicom":
        yield AzureArchive()
    elif kind == "aws-healthimaging":
        with HealthImagingFake() as fake:
            yield HealthImagingArchive(fake)
    else:
        yield OrthancArchive(orthanc_archive, kind, gateway)


@pytest.fixture
def source(archive: Archive) -> Iterator[Source]:
    made = archive.source()
    yield made
    made.close()


def study(name: str, *series: int) -> StudySpec:
    """A study of its own patient, with series of these sizes, dated recently."""
    return StudySpec(
        key=f"contract-{name}",
        patient_id=f"C-{name}",
        patient_name="Contract^Patient",
        study_date=RECENT,
        series=[SeriesSpec("CT", n, number=i + 1) for i, n in enumerate(series)],
    )


def stored(archive: Archive, spec: StudySpec) -> None:
    archive.put(list(instances(spec)))


def key_of(source: Source, spec: StudySpec) -> str:
    keys = source.lookup_study(spec.study_uid)
    assert len(keys) == 1, keys
    return keys[0]


def followed(source: Source, cursor: str | None = None) -> tuple[set[str], str | None]:
    """What one poll finds to sync, as the worker's feed would: the feed's marks from
    `cursor` on, or the keys the listing shows; and where the feed ended."""
    if isinstance(source, ChangeFeed):
        keys: set[str] = set()
        for _ in range(1000):
            page = source.read_changes(cursor, 100)
            keys |= {m.study_key for m in page.marks}
            cursor = page.cursor
            if page.done:
                return keys, cursor
        raise AssertionError("the feed never ended")
    assert isinstance(source, StudyListing)
    return set(source.list_studies()), None


def test_every_kind_is_followed_by_a_feed_or_a_listing_and_lists_its_archive(
    source: Source,
) -> None:
    assert isinstance(source, (ChangeFeed, StudyListing))
    assert isinstance(source, ArchiveListing)
    assert source.kind in registry.KINDS
    assert source.check()  # a reachable server is described


def test_a_stored_study_is_found_and_read_as_the_archive_holds_it(
    archive: Archive, source: Source
) -> None:
    spec = study("read", 2, 1)
    stored(archive, spec)
    found, _ = followed(source)
    key = key_of(source, spec)
    assert key in found
    fetched = source.fetch_study(key)
    assert fetched.view is not None and not fetched.gone
    assert fetched.view.uid == spec.study_uid
    assert fetched.view.instance_count == 3
    assert {s.uid for s in fetched.view.series} == {spec.series_uid(0), spec.series_uid(1)}
    assert source.location(key) == source.location(key)  # never a request: the same each time


def test_a_new_study_is_found_by_the_next_poll(archive: Archive, source: Source) -> None:
    stored(archive, study("first", 1))
    _, cursor = followed(source)
    later = study("later", 2)
    stored(archive, later)
    found, _ = followed(source, cursor)
    assert key_of(source, later) in found


def test_a_removed_study_is_gone_and_the_next_poll_says_so(
    archive: Archive, source: Source
) -> None:
    spec = study("removed", 2)
    stored(archive, spec)
    key = key_of(source, spec)
    _, cursor = followed(source)
    if isinstance(source, StudyListing):
        assert key in source.list_studies() and source.covers(key)
    archive.remove(spec.study_uid)
    fetched = source.fetch_study(key)
    assert fetched.gone and fetched.view is None
    if logs_deletes(source):
        assert key in followed(source, cursor)[0]  # the feed names the deletion
    else:
        assert isinstance(source, StudyListing)
        assert key not in source.list_studies() and source.covers(key)  # the scan sees it


def test_the_archive_listing_names_every_study_once(archive: Archive, source: Source) -> None:
    specs = [study(f"listed-{n}", 1) for n in range(3)]
    for spec in specs:
        stored(archive, spec)
    assert isinstance(source, ArchiveListing)
    keys: list[str] = []
    after: str | None = None
    for _ in range(1000):
        page = source.archive(DateSpan(), after, 2)
        keys += page.keys
        after = page.after
        if after is None:
            break
    assert len(keys) == len(set(keys))  # nothing twice
    assert {key_of(source, s) for s in specs} <= set(keys)


def test_a_feed_read_from_its_head_names_what_comes_after(archive: Archive, source: Source) -> None:
    """`cursor set head`: the changes still to come. A feed positioned by time reads a
    short overlap before it again (the DICOM service's v2 the head's own instant,
    HealthImaging 30 s for its index to settle): at least once, so nothing there is
    asserted absent; a kind without a feed says what to set instead."""
    if not isinstance(source, ChangeFeed):
        with pytest.raises(OperatorError, match="lookback_days"):
            registry.change_feed(source)
        return
    stored(archive, study("before-head", 2))
    head = source.head()
    after = study("after-head", 1)
    stored(archive, after)
    found, _ = followed(source, head)
    assert key_of(source, after) in found


def test_a_stored_cursor_the_kind_cannot_use_is_one_error(archive: Archive) -> None:
    for nonsense in ("²", "9" * 5000, "-3", "head; DROP"):
        with pytest.raises(StoredValueError):
            registry.check_cursor(archive.config(), nonsense)
