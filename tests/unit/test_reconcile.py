"""Whole runs of the worker against the in-memory FHIR server: what lands, what a rerun
writes (nothing), deletions, two sources holding one study, foreign elements, and a refused
transaction leaving nothing half-written. Fast twins of the real-server integration tests."""

from __future__ import annotations

from typing import Any

from tests.fakes import FakeSource, studies
from tests.fhir_fake import FakeFhir


def test_a_run_writes_every_study_once_and_a_rerun_writes_nothing(run: Any) -> None:
    fhir, source = FakeFhir(), FakeSource(studies(4))
    code, worker = run(fhir, source)
    assert code == 0 and worker.totals["synced"] == 4
    assert len(fhir.all("ImagingStudy")) == 4 and len(fhir.all("Patient")) == 2
    assert len(fhir.all("Endpoint")) == 1
    for study in fhir.all("ImagingStudy"):
        patient = study["subject"]["reference"]
        assert patient.startswith("Patient/") and patient[8:] in fhir.resources["Patient"]
        assert study["endpoint"] == [{"reference": f"Endpoint/{fhir.all('Endpoint')[0]['id']}"}]
    before, sent = fhir.versions(), fhir.counts()["POST"]
    source.feed += list(source.studies)  # every study named again by the feed
    code, worker = run(fhir, source)
    assert code == 0 and worker.totals["unchanged"] == 4 and worker.totals["synced"] == 0
    assert fhir.versions() == before  # not one new version
    assert fhir.counts()["POST"] == sent  # and not one write (the no-op check is local)


def test_a_study_gone_from_the_source_is_removed_from_fhir(run: Any) -> None:
    fhir, source = FakeFhir(), FakeSource(studies(3))
    run(fhir, source)
    gone = next(iter(source.studies))
    del source.studies[gone]
    code, worker = run(fhir, source)  # no feed entry: the reconcile scan finds it
    assert code == 0 and worker.totals["deleted"] == 1
    assert len(fhir.all("ImagingStudy")) == 2
    assert not fhir.search("ImagingStudy", f"urn:dicom:uid|urn:oid:{gone}")
    assert worker.store.find("default", gone) == []


def test_entered_in_error_keeps_the_resource_and_marks_it(run: Any) -> None:
    fhir, source = FakeFhir(), FakeSource(studies(1))
    run(fhir, source)
    del source.studies[next(iter(source.studies))]
    run(fhir, source, deleted_study_policy="entered-in-error")
    (study,) = fhir.all("ImagingStudy")
    assert study["status"] == "entered-in-error"


def test_elements_another_system_wrote_survive_a_resync(run: Any) -> None:
    fhir, source = FakeFhir(), FakeSource(studies(1, series=1))
    run(fhir, source)
    (study,) = fhir.all("ImagingStudy")
    study["basedOn"] = [{"reference": "ServiceRequest/order-1"}]  # an order system wrote it
    uid = next(iter(source.studies))
    source.studies[uid] = source.studies[uid][:-1] or source.studies[uid]
    source.studies[uid][0]["00081030"] = {"vr": "LO", "Value": ["Changed description"]}
    source.feed.append(uid)
    code, worker = run(fhir, source)
    assert code == 0 and worker.totals["synced"] == 1
    (study,) = fhir.all("ImagingStudy")
    assert study["description"] == "Changed description"
    assert study["basedOn"] == [{"reference": "ServiceRequest/order-1"}]
    assert study["meta"]["versionId"] == "2"


def test_two_sources_write_one_imaging_study_holding_their_union(run: Any) -> None:
    shared = studies(1, series=3, prefix="two")
    uid, instances = next(iter(shared.items()))
    by_series: dict[str, list[Any]] = {}
    for instance in instances:
        by_series.setdefault(instance["0020000E"]["Value"][0], []).append(instance)
    first, second, third = by_series.values()
    pacs = FakeSource({uid: first + second}, "pacs")
    cloud = FakeSource({uid: second + third}, "cloud")
    fhir = FakeFhir()
    code, _ = run(fhir, pacs, cloud)
    assert code == 0
    (study,) = fhir.all("ImagingStudy")
    assert study["numberOfSeries"] == 3 and study["numberOfInstances"] == len(instances)
    assert len(fhir.all("Patient")) == 1
    before = fhir.versions()
    run(fhir, pacs, cloud)  # a rerun of both sources changes nothing
    assert fhir.versions() == before
    del pacs.studies[uid]
    run(fhir, pacs, cloud)  # one source lost it: the other's part remains
    (study,) = fhir.all("ImagingStudy")
    assert study["numberOfSeries"] == 2 and study["numberOfInstances"] == len(second + third)
    del cloud.studies[uid]
    run(fhir, pacs, cloud)
    assert fhir.all("ImagingStudy") == []


def test_a_refused_transaction_leaves_nothing_half_written(run: Any) -> None:
    fhir, source = FakeFhir(), FakeSource(studies(2))
    refused = next(iter(source.studies))

    def reject(resource: dict[str, Any]) -> str | None:
        ids = [i.get("value") for i in resource.get("identifier") or []]
        return "business rule: study refused" if f"urn:oid:{refused}" in ids else None

    fhir.reject = reject
    code, worker = run(fhir, source)
    assert code == 1 and worker.totals["synced"] == 1 and worker.totals["failed"] == 1
    assert len(fhir.all("ImagingStudy")) == 1
    # The refused study's Patient went in the same transaction: rolled back with it, unless
    # the other study (same patient) created it on its own.
    subjects = {s["subject"]["reference"] for s in fhir.all("ImagingStudy")}
    assert {f"Patient/{p['id']}" for p in fhir.all("Patient")} == subjects
    (row,) = worker.store.failures("default")
    assert (row.status, row.error_kind, row.error_status) == ("failed", "FhirRejected", 400)
    assert "business rule" in (row.error_detail or "")  # the server's words, kept apart
    assert row.last_error == "transaction: HTTP 400 (processing)"


def test_a_version_conflict_is_re_read_and_merged(run: Any) -> None:
    fhir, source = FakeFhir(), FakeSource(studies(1, series=1))
    run(fhir, source)
    uid = next(iter(source.studies))
    source.studies[uid][0]["00081030"] = {"vr": "LO", "Value": ["Second description"]}
    source.feed.append(uid)
    (study,) = fhir.all("ImagingStudy")
    puts: list[str] = []

    def another_writer_first(bundle: dict[str, Any]) -> None:
        # Between our read and our update, a radiologist's system updates the study.
        methods = [e["request"]["method"] for e in bundle["entry"]]
        puts.extend(m for m in methods if m == "PUT")
        if methods == ["PUT"] and len(puts) == 1:
            stored = fhir.resources["ImagingStudy"][study["id"]]
            stored["note"] = [{"text": "read by a radiologist"}]
            stored["meta"] = {"versionId": str(int(stored["meta"]["versionId"]) + 1)}

    fhir.before_transaction = another_writer_first
    code, worker = run(fhir, source)
    assert code == 0 and worker.totals["synced"] == 1 and len(puts) == 2  # 412, then merged
    (study,) = fhir.all("ImagingStudy")
    assert study["description"] == "Second description"
    assert study["note"] == [{"text": "read by a radiologist"}]
    assert study["meta"]["versionId"] == "3"
