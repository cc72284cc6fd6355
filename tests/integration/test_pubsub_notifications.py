"""A Google DICOM store followed by its Pub/Sub notifications: the `dicomweb` kind in front
of the real Orthanc's DICOMweb (its REST API hidden), with the Pub/Sub pull API on a
loopback fake of its documented wire format. A notification marks its study at the next
poll, with no listing; it is acknowledged only once the mark is committed; the listing
still finds what notifications never say."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from dicomcast.app import build_app
from dicomcast.config import Settings
from dicomcast.errors import StateUnavailable
from dicomcast.model import DirtyMark, Skipped
from dicomcast.ops.metrics import Metrics
from dicomcast.sandbox.samples import SeriesSpec, StudySpec, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.sources.base import Notifications
from dicomcast.sources.windows import study_key
from dicomcast.sync.feed import Feed
from dicomcast.worker import Worker
from tests.dicomweb_gateway import DicomwebOnly
from tests.pubsub_fake import SUBSCRIPTION, PubSubFake

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway(orthanc: OrthancServer) -> Iterator[DicomwebOnly]:
    with DicomwebOnly(orthanc.url) as served:
        yield served


@pytest.fixture
def pubsub() -> Iterator[PubSubFake]:
    with PubSubFake() as fake:
        yield fake


@pytest.fixture
def worker(
    gateway: DicomwebOnly,
    pubsub: PubSubFake,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
) -> Iterator[Worker]:
    settings = make_settings(
        source_kind="dicomweb",
        source_url=gateway.dicomweb_url,
        source_lookback_days=3650,
        source_sweep_interval=0,
        source_pubsub_subscription=SUBSCRIPTION,
        source_pubsub_url=pubsub.url,
    )
    made = Worker(build_app(settings))
    made.prepare()
    yield made
    made.close()
    made.app.close()


def study(name: str, instances_: int = 3) -> StudySpec:
    return StudySpec(
        key=f"pubsub-{name}",
        patient_id=f"PS-{name}",
        patient_name="Notified^Patient",
        issuer="HOSP-A",
        study_date="20261201",
        series=[SeriesSpec("CT", instances_)],
    )


def store(orthanc: OrthancServer, pubsub: PubSubFake | None, spec: StudySpec) -> None:
    """The study stored in the archive, and (unless the message is lost) its notifications."""
    datasets = list(instances(spec))
    orthanc.upload([to_bytes(ds) for ds in datasets])
    if pubsub is not None:
        pubsub.stored(datasets)


def listings(gateway: DicomwebOnly) -> list[str]:
    """The study searches by date the source made (the listing), not by UID (a lookup)."""
    return [t for t in gateway.targets if t.startswith("/dicom-web/studies?") and "StudyDate" in t]


def synced_studies(fhir: FhirServer) -> set[str]:
    with fhir.client() as client:
        bundle = client.get("ImagingStudy").json()
    return {
        i["value"].removeprefix("urn:oid:")
        for e in bundle.get("entry", [])
        for i in e["resource"].get("identifier", [])
    }


def test_a_notification_marks_its_study_at_the_next_poll_without_a_listing(
    orthanc: OrthancServer,
    gateway: DicomwebOnly,
    pubsub: PubSubFake,
    fhir: FhirServer,
    worker: Worker,
) -> None:
    assert isinstance(worker.sources["default"], Notifications)
    spec = study("new")
    store(orthanc, pubsub, spec)
    assert worker.tail() == 1  # three messages, one study
    assert pubsub.acknowledged == ["1", "2", "3"] and not pubsub.leased
    assert listings(gateway) == []  # looked up by UID, never listed
    assert worker.sync_round(wait_for_stable=False).attempted == 1
    assert spec.study_uid in synced_studies(fhir)
    assert worker.tail() == 0 and pubsub.pulls == 3  # nothing waiting: one empty pull


def test_newer_stores_notifications_with_attributes_are_read_the_same(
    orthanc: OrthancServer, pubsub: PubSubFake, worker: Worker
) -> None:
    spec = study("attributes", 2)
    datasets = list(instances(spec))
    orthanc.upload([to_bytes(ds) for ds in datasets])
    pubsub.stored(datasets, attributes=True)
    assert worker.tail() == 1 and len(pubsub.acknowledged) == 2


class FailingState:
    """The state DB, failing when the notifications' marks are committed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.failing = True

    def record_notified(
        self, source: str, marks: Iterable[DirtyMark], skipped: Iterable[Skipped] = ()
    ) -> int:
        if self.failing:
            raise StateUnavailable("the state database is unreachable")
        marked: int = self.inner.record_notified(source, marks, skipped)
        return marked

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_notifications_are_acknowledged_only_after_their_marks_are_committed(
    orthanc: OrthancServer, pubsub: PubSubFake, worker: Worker
) -> None:
    spec = study("uncommitted", 2)
    store(orthanc, pubsub, spec)
    state = FailingState(worker.store)
    feed = Feed(
        state,
        worker.sources,
        Metrics(),
        page_size=100,
        stop=threading.Event(),
        totals=Counter(),
        beat=lambda: None,
    )
    with pytest.raises(StateUnavailable):
        feed.tail("default")
    assert pubsub.acknowledged == [] and len(pubsub.leased) == 2  # not acknowledged
    assert worker.store.known_studies("default") == {}
    pubsub.expire()  # the ack deadline passes: Pub/Sub delivers them again
    state.failing = False
    assert feed.tail("default") == 1
    assert sorted(pubsub.acknowledged) == ["1", "2"]
    known = worker.store.known_studies("default")
    assert list(known) == [study_key(spec.study_date, spec.study_uid)]


def test_a_notification_that_names_no_study_is_recorded_and_not_pulled_again(
    pubsub: PubSubFake, worker: Worker
) -> None:
    pubsub.publish(b"projects/p/locations/l/datasets/d/dicomStores/s")  # no study in it
    pubsub.publish(b"\xff\xfe not text")
    assert worker.tail() == 0
    assert len(pubsub.acknowledged) == 2 and not pubsub.waiting
    reasons = {row.reason for row in worker.store.feed_skips("default")}
    assert reasons == {
        "a notification that names no study",
        "a notification whose data is not base64 text",
    }


def test_what_notifications_never_say_is_found_by_the_listing(
    orthanc: OrthancServer,
    pubsub: PubSubFake,
    fhir: FhirServer,
    worker: Worker,
) -> None:
    kept, removed = study("kept", 1), study("removed", 1)
    store(orthanc, pubsub, kept)
    store(orthanc, pubsub, removed)
    worker.tail()
    while worker.sync_round(wait_for_stable=False).attempted:
        pass
    assert {kept.study_uid, removed.study_uid} <= synced_studies(fhir)
    lost = study("lost", 2)
    store(orthanc, None, lost)  # its messages never came
    with orthanc.client() as client:
        found = client.post("/tools/lookup", content=removed.study_uid).json()
        client.delete(f"/studies/{found[0]['ID']}").raise_for_status()  # deletions: no message
    assert worker.tail() == 0
    assert worker.feed.scan("default") == 2  # the reconcile scan lists the archive
    while worker.sync_round(wait_for_stable=False).attempted:
        pass
    assert synced_studies(fhir) >= {kept.study_uid, lost.study_uid}
    assert removed.study_uid not in synced_studies(fhir)


def test_while_pubsub_is_down_each_poll_lists_instead(
    orthanc: OrthancServer, gateway: DicomwebOnly, pubsub: PubSubFake, worker: Worker
) -> None:
    pubsub.down = True
    spec = study("pubsub-down", 1)
    store(orthanc, pubsub, spec)
    assert worker.tail() == 1  # found by the listing
    assert listings(gateway) and not worker.source_pause("default").active()
    pubsub.down = False
    assert worker.tail() == 1 and pubsub.acknowledged == ["1"]  # its message: marked again
