"""Deletions only on proof and within the budget, and failed studies that stay parked:
fast twins of `tests/integration/test_deletion_safety.py`, on the in-memory fakes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomcast.config import DEFAULT_PARTITION, load_settings
from dicomcast.errors import MappingError, SourceUnavailable
from dicomcast.http import RetryPolicy
from dicomcast.model import DirtyMark, StudyTask
from dicomcast.sources.azure import AzureDicomSource
from dicomcast.sources.base import FetchedStudy
from dicomcast.sources.orthanc import OrthancSource
from dicomcast.state.store import StateStore
from tests.fakes import FakeSource, ListedFake, studies
from tests.fhir_fake import FakeFhir

STUDY_UID = "1.2.826.0.1.3680043.8.498.77"


class Unproven(FakeSource):
    """A source with a bug: it answers "no study" without having proven it is gone."""

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        if key not in self.studies:
            return FetchedStudy(key, None)
        return super().fetch_study(key, unless_unstable=unless_unstable)


def test_a_study_the_source_does_not_prove_gone_is_never_deleted(run: Any) -> None:
    fhir, source = FakeFhir(), Unproven(studies(2))
    assert run(fhir, source)[0] == 0
    gone = next(iter(source.studies))
    del source.studies[gone]
    code, worker = run(fhir, source)
    assert code == 1 and worker.totals["deleted"] == 0
    assert len(fhir.all("ImagingStudy")) == 2


def test_deletions_past_the_budget_are_held_then_approved_or_rejected(run: Any) -> None:
    fhir, source = FakeFhir(), FakeSource(studies(12))
    assert run(fhir, source, delete_budget=3)[0] == 0
    keys = list(source.studies)
    for key in keys[:8]:
        del source.studies[key]
    code, worker = run(fhir, source, delete_budget=3)
    assert code == 1 and worker.totals["deleted"] == 3 and worker.totals["held"] == 5
    assert len(fhir.all("ImagingStudy")) == 9
    store = worker.store
    held = store.held_deletions("default")
    assert len(held) == 5 and worker.metrics.registry.get_sample_value(
        "dicomcast_deletions_held", {"source": "default"}
    ) in (None, 5.0)
    assert store.decide_deletions("default", held[0].study_key, approve=False) == 1
    assert store.decide_deletions("default", None, approve=True) == 4
    code, worker = run(fhir, source, delete_budget=3)
    assert code == 0 and worker.totals["deleted"] == 4  # approved ones pass the spent budget
    assert len(fhir.all("ImagingStudy")) == 5  # 4 untouched, 1 kept by the operator
    code, worker = run(fhir, source, delete_budget=3)
    assert worker.totals["deleted"] == 0 and worker.totals["held"] == 0
    assert worker.store.counts("default") == {"clean": 4, "kept": 1}


def test_an_unlimited_budget_deletes_everything_proven_gone(run: Any) -> None:
    fhir, source = FakeFhir(), FakeSource(studies(6))
    assert run(fhir, source, delete_budget="unlimited")[0] == 0
    source.studies.clear()
    code, worker = run(fhir, source, delete_budget="unlimited")
    assert code == 0 and worker.totals["deleted"] == 6 and fhir.all("ImagingStudy") == []


def test_the_budget_holds_for_workers_taking_slots_at_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    store.ensure_source("default", "fake")
    store.mark_dirty("default", [DirtyMark(f"k{n}") for n in range(40)])
    tasks = store.claim_due("default", "w", 60, 40)
    with ThreadPoolExecutor(8) as pool:
        taken = list(pool.map(lambda t: store.take_deletion(t, 10), tasks))
    assert sum(taken) == 10 and store.deletions_spent("default") == 10
    approved = StudyTask(**{**tasks[0].__dict__, "deletion_approved": True})
    assert store.take_deletion(approved, 10) and store.deletions_spent("default") == 10
    store.close()


class Failing(ListedFake):
    """A source whose listing shows every study, one of which always fails to read."""

    poison = ""
    reads = 0

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        if key == self.poison:
            self.reads += 1
            raise ValueError("a value C-FIND gave that nothing parses")
        return super().fetch_study(key, unless_unstable=unless_unstable)


def test_a_failed_study_is_not_marked_again_by_each_listing(run: Any) -> None:
    fhir, source = FakeFhir(), Failing(studies(3))
    source.poison = next(iter(source.studies))
    code, worker = run(fhir, source, max_attempts=1)
    assert code == 1 and worker.totals["synced"] == 2 and source.reads == 1
    for _ in range(3):
        run(fhir, source, max_attempts=1)
    assert source.reads == 1  # the same count each listing: it stays parked
    source.studies[source.poison] = source.studies[source.poison][:-1]  # its content changed
    run(fhir, source, max_attempts=1)
    assert source.reads == 2


def orthanc_answering(routes: dict[str, Any]) -> OrthancSource:
    def answer(request: httpx.Request) -> httpx.Response:
        route = routes.get(request.url.path)
        if route is None:
            return httpx.Response(404)
        return httpx.Response(200, json=route)

    settings = load_settings(None, source_url="http://orthanc.test", fhir_url="http://f.test")
    return OrthancSource(settings.first_source(), transport=httpx.MockTransport(answer))


def test_orthanc_dicomweb_404_for_a_study_rest_holds_is_an_outage_naming_the_plugin() -> None:
    study = {"MainDicomTags": {"StudyInstanceUID": STUDY_UID}, "IsStable": True}
    source = orthanc_answering({"/studies/s1": study, "/system": {"Version": "1.10.1"}})
    source.rest.retry = RetryPolicy(attempts=1)
    with pytest.raises(SourceUnavailable, match="DICOMweb plugin") as raised:
        source.fetch_study("s1")
    assert raised.value.outage
    with pytest.raises(SourceUnavailable, match="DICOMweb plugin"):
        source.check()
    gone = orthanc_answering({}).fetch_study("s1")
    assert gone.gone and gone.view is None


def test_the_dicom_service_confirms_a_404_by_a_qido_search() -> None:
    listed = {"found": True}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/metadata"):
            return httpx.Response(404)
        if request.url.path.endswith("/studies"):
            return httpx.Response(200, json=[{"0020000D": {"vr": "UI", "Value": [STUDY_UID]}}]
                                  if listed["found"] else [])  # fmt: skip
        return httpx.Response(404)

    settings = load_settings(
        None, source_kind="azure-dicom", source_url="https://dicom.test", fhir_url="http://f.test"
    )
    source = AzureDicomSource(settings.first_source(), transport=httpx.MockTransport(answer))
    with pytest.raises(SourceUnavailable, match="QIDO"):
        source.fetch_study(f"{DEFAULT_PARTITION}/{STUDY_UID}")
    listed["found"] = False
    assert source.fetch_study(f"{DEFAULT_PARTITION}/{STUDY_UID}").gone


def test_orthanc_dicomweb_404_for_one_odd_study_parks_only_that_study() -> None:
    """Orthanc's DICOMweb cannot find some odd studies its REST API holds (the pydicom
    corpus has two): while the plugin answers, that is the study's own failure."""
    study = {"MainDicomTags": {"StudyInstanceUID": STUDY_UID}, "IsStable": True}
    source = orthanc_answering({"/studies/s1": study, "/dicom-web/studies": []})
    source.rest.retry = RetryPolicy(attempts=1)
    with pytest.raises(MappingError, match="finds no study"):
        source.fetch_study("s1")
