"""Upsert merge, no-op detection and conflict handling, against scripted FHIR answers (httpx
MockTransport): the exact requests sent matter here; `test_fhir_fake` covers whole runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from dicomcast.errors import FhirRejected, MappingError
from dicomcast.fhir.client import FhirClient
from dicomcast.fhir.patients import merge_patient
from dicomcast.fhir.upsert import FhirWriter
from dicomcast.mapping.mapper import MappedStudy

BASE = "http://fhir.test/fhir"
PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:s", "value": "P1"}],
    "name": [{"family": "Doe"}],
    "birthDate": "1980-01-01",
}
STUDY = {
    "resourceType": "ImagingStudy",
    "status": "available",
    "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}],
    "subject": {"reference": "urn:uuid:p"},
    "description": "CT",
}
OWNED_P = frozenset({"identifier", "name", "gender", "birthDate"})
OWNED_S = frozenset({"identifier", "status", "subject", "description", "series"})


def mapped() -> MappedStudy:
    return MappedStudy("1.2.3", dict(PATIENT), dict(STUDY), "urn:uuid:p", ())


class Counting(httpx.MockTransport):
    """A scripted server that counts the requests it answered."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.call_count = 0

        def counted(request: httpx.Request) -> httpx.Response:
            self.call_count += 1
            return handler(request)

        super().__init__(counted)


def writer(transport: httpx.BaseTransport, max_entries: int = 100) -> FhirWriter:
    return FhirWriter(
        FhirClient(BASE, transport=transport),
        patient_owned=OWNED_P,
        study_owned=OWNED_S,
        patient_policy="fill-missing",
        deleted_policy="delete",
        max_entries=max_entries,
    )


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def batch_answer(patients: list[Any], studies: list[Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "batch-response",
        "entry": [
            {"response": {"status": "200 OK"}, "resource": searchset(*patients)},
            {"response": {"status": "200 OK"}, "resource": searchset(*studies)},
        ],
    }


def stored(resource: dict[str, Any], rid: str, version: str = "1") -> dict[str, Any]:
    return {**resource, "id": rid, "meta": {"versionId": version}}


def tx_answer(*statuses: tuple[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {"response": {"status": status, "location": f"{BASE}/{loc}/_history/1"}}
            for status, loc in statuses
        ],
    }


def bundle_type(request: httpx.Request) -> str:
    return str(json.loads(request.content)["type"])


def test_new_study_is_one_read_and_one_conditional_transaction() -> None:
    sent: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["type"] == "batch":
            return httpx.Response(200, json=batch_answer([], []))
        sent.append(body)
        return httpx.Response(
            200, json=tx_answer(("201 Created", "Patient/p9"), ("201 Created", "ImagingStudy/s9"))
        )

    result = writer(Counting(answer)).upsert_study(mapped())
    assert (result.patient_id, result.imaging_study_id, result.wrote) == ("p9", "s9", True)
    (tx,) = sent
    assert [e["request"]["ifNoneExist"] for e in tx["entry"]] == [
        "identifier=urn:s|P1",
        "identifier=urn:dicom:uid|urn:oid:1.2.3",
    ]
    assert tx["entry"][1]["resource"]["subject"] == {"reference": "urn:uuid:p"}
    assert tx["entry"][0]["fullUrl"] == "urn:uuid:p"


def test_unchanged_study_is_not_written_and_foreign_elements_survive() -> None:
    current = stored(
        {
            **STUDY,
            "subject": {"reference": "Patient/p1"},
            "basedOn": [{"reference": "ServiceRequest/1"}],
        },
        "s1",
    )
    route = Counting(
        lambda _: httpx.Response(200, json=batch_answer([stored(PATIENT, "p1")], [current]))
    )
    result = writer(route).upsert_study(mapped())
    assert result.wrote is False and route.call_count == 1


def test_changed_study_updates_with_if_match_and_retries_after_412() -> None:
    current = stored(
        {
            **STUDY,
            "subject": {"reference": "Patient/p1"},
            "description": "old",
            "basedOn": [{"reference": "ServiceRequest/1"}],
        },
        "s1",
        "4",
    )
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append(body["type"])
        if body["type"] == "batch":
            return httpx.Response(200, json=batch_answer([stored(PATIENT, "p1")], [current]))
        entry = body["entry"][0]
        assert entry["request"] == {"method": "PUT", "url": "ImagingStudy/s1", "ifMatch": 'W/"4"'}
        assert entry["resource"]["basedOn"] == [{"reference": "ServiceRequest/1"}]
        assert entry["resource"]["description"] == "CT"
        if calls.count("transaction") == 1:
            return httpx.Response(412, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json=tx_answer(("200 OK", "ImagingStudy/s1")))

    assert writer(Counting(answer)).upsert_study(mapped()).wrote is True
    assert calls == ["batch", "transaction", "batch", "transaction"]


def test_study_created_concurrently_is_re_read_and_merged() -> None:
    state = {"batches": 0}

    def answer(request: httpx.Request) -> httpx.Response:
        if bundle_type(request) == "batch":
            state["batches"] += 1
            studies = (
                []
                if state["batches"] == 1
                else [stored({**STUDY, "subject": {"reference": "Patient/p1"}}, "s1")]
            )
            return httpx.Response(200, json=batch_answer([stored(PATIENT, "p1")], studies))
        # ifNoneExist matched someone else's new resource: 200, not 201.
        return httpx.Response(200, json=tx_answer(("200 OK", "ImagingStudy/s1")))

    result = writer(Counting(answer)).upsert_study(mapped())
    assert state["batches"] == 2 and result.imaging_study_id == "s1" and not result.wrote


def test_two_patients_with_one_identifier_are_refused_not_guessed() -> None:
    two = batch_answer([stored(PATIENT, "a"), stored(PATIENT, "b")], [])
    route = Counting(lambda _: httpx.Response(200, json=two))
    with pytest.raises(MappingError, match="2 Patient resources match"):
        writer(route).upsert_study(mapped())


def test_rejection_keeps_the_operation_outcome() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if bundle_type(request) == "batch":
            return httpx.Response(200, json=batch_answer([], []))
        return httpx.Response(
            400,
            json={
                "resourceType": "OperationOutcome",
                "issue": [
                    {"severity": "error", "code": "invalid", "diagnostics": "series.uid missing"}
                ],
            },
        )

    with pytest.raises(FhirRejected) as caught:
        writer(Counting(answer)).upsert_study(mapped())
    assert caught.value.status == 400 and "series.uid missing" in caught.value.outcome


def test_server_without_batch_falls_back_to_plain_searches() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":  # Patient?identifier=... and ImagingStudy?identifier=...
            assert request.url.path.rsplit("/", 1)[-1] in ("Patient", "ImagingStudy")
            return httpx.Response(200, json=searchset())
        if bundle_type(request) == "batch":
            return httpx.Response(501)
        return httpx.Response(
            200, json=tx_answer(("201 Created", "Patient/p"), ("201 Created", "ImagingStudy/s"))
        )

    assert writer(Counting(answer)).upsert_study(mapped()).imaging_study_id == "s"


def test_patient_policies() -> None:
    ehr = {
        "resourceType": "Patient",
        "id": "x",
        "identifier": [{"system": "urn:ehr", "value": "9"}],
        "name": [{"family": "EHR"}],
    }
    filled = merge_patient(ehr, PATIENT, OWNED_P, "fill-missing")
    assert filled["name"] == [{"family": "EHR"}] and filled["birthDate"] == "1980-01-01"
    assert len(filled["identifier"]) == 2
    assert merge_patient(ehr, PATIENT, OWNED_P, "never") == ehr
    assert merge_patient(ehr, PATIENT, OWNED_P, "overwrite")["name"] == [{"family": "Doe"}]


def test_match_keys_are_escaped_and_url_encoded() -> None:
    from dicomcast.mapping.mapper import search_token

    patient = {"identifier": [{"system": "urn:oid:1.2", "value": "A&B +C|D#1"}]}
    assert search_token(patient) == "urn:oid:1.2|A%26B%20%2BC%5C|D%231"


class ScriptedFhir:
    """Answers transactions with the given statuses in turn; Patient searches with `ehr`."""

    def __init__(
        self,
        *answers: tuple[str, str],
        ehr: dict[str, Any] | None = None,
        studies: list[dict[str, Any]] | None = None,
    ) -> None:
        self.answers = list(answers)
        self.ehr = ehr
        self.studies = studies or []
        self.sent: list[tuple[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.sent.append(("search", request.url.path))
            found = [self.ehr] if self.ehr and "Patient" in request.url.path else []
            return httpx.Response(200, json=searchset(*found))
        body = json.loads(request.content)
        self.sent.append((body["type"], body))
        if body["type"] == "batch":
            patients = [self.ehr] if self.ehr else []
            return httpx.Response(200, json=batch_answer(patients, self.studies))
        statuses = [self.answers.pop(0) for _ in body["entry"]]
        return httpx.Response(200, json=tx_answer(*statuses))


def test_a_study_never_written_costs_one_request() -> None:
    fhir = ScriptedFhir(("201 Created", "Patient/p9"), ("201 Created", "ImagingStudy/s9"))
    result = writer(Counting(fhir)).upsert_study(mapped(), new=True)
    assert (result.patient_id, result.imaging_study_id, result.wrote) == ("p9", "s9", True)
    assert [kind for kind, _ in fhir.sent] == ["transaction"]
    entries = fhir.sent[0][1]["entry"]
    assert [e["request"]["method"] for e in entries] == ["POST", "POST"]
    assert all("ifNoneExist" in e["request"] for e in entries)


def test_an_ehr_patient_met_by_the_create_gets_its_policy_and_the_study_is_read_back() -> None:
    ehr = stored({**PATIENT, "name": [{"family": "EHR-Name"}]}, "p1", version="3")
    del ehr["birthDate"]
    # What the server holds after the create: the study points at the Patient it matched.
    created = stored({**STUDY, "subject": {"reference": "Patient/p1"}}, "s9")
    fhir = ScriptedFhir(
        ("200 OK", "Patient/p1"),  # the EHR's Patient matched the conditional create
        ("201 Created", "ImagingStudy/s9"),
        ("200 OK", "Patient/p1"),  # the fill-missing update
        ("200 OK", "Patient/p1"),  # a second study of the same patient
        ("201 Created", "ImagingStudy/s10"),
        ehr=ehr,
        studies=[created],
    )
    w = writer(Counting(fhir))
    assert w.upsert_study(mapped(), new=True).patient_id == "p1"
    kinds = [kind for kind, _ in fhir.sent]
    assert kinds == ["transaction", "batch", "transaction"]
    (update,) = fhir.sent[2][1]["entry"]
    assert update["request"] == {"method": "PUT", "url": "Patient/p1", "ifMatch": 'W/"3"'}
    assert update["resource"]["name"] == [{"family": "EHR-Name"}]  # never clobbered
    assert update["resource"]["birthDate"] == "1980-01-01"  # filled in

    # The same Patient content again, answered at the id read back: one request.
    second = MappedStudy("1.2.4", dict(PATIENT), {**STUDY, "identifier": [
        {"system": "urn:dicom:uid", "value": "urn:oid:1.2.4"}]}, "urn:uuid:p", ())  # fmt: skip
    w.upsert_study(second, new=True)
    assert [kind for kind, _ in fhir.sent][3:] == ["transaction"]


def test_a_study_linked_to_another_patient_than_the_one_matched_is_rewritten() -> None:
    """A server once answered "Patient exists at A" and linked the new study to a B that
    never existed: the read-back sees it, and the study is written again, to A."""
    patient = stored(PATIENT, "p1")
    wrong = stored({**STUDY, "subject": {"reference": "Patient/never"}}, "s9")
    fhir = ScriptedFhir(
        ("200 OK", "Patient/p1"),
        ("201 Created", "ImagingStudy/s9"),
        ("200 OK", "ImagingStudy/s9"),  # the repair
        ehr=patient,
        studies=[wrong],
    )
    writer(Counting(fhir)).upsert_study(mapped(), new=True)
    kinds = [kind for kind, _ in fhir.sent]
    assert kinds == ["transaction", "batch", "transaction"]
    (repair,) = fhir.sent[2][1]["entry"]
    assert repair["request"]["url"] == "ImagingStudy/s9"
    assert repair["resource"]["subject"] == {"reference": "Patient/p1"}


def test_a_study_that_existed_after_all_goes_through_read_merge_write() -> None:
    existing = stored({**STUDY, "subject": {"reference": "Patient/p9"}, "description": "old"}, "s1")
    fhir = ScriptedFhir(
        ("201 Created", "Patient/p9"),
        ("200 OK", "ImagingStudy/s1"),  # it was there (e.g. the state DB was replaced)
        ("200 OK", "ImagingStudy/s1"),
        ehr=stored(PATIENT, "p9"),
        studies=[existing],
    )
    result = writer(Counting(fhir)).upsert_study(mapped(), new=True)
    assert [kind for kind, _ in fhir.sent] == ["transaction", "batch", "transaction"]
    (update,) = fhir.sent[2][1]["entry"]
    assert update["request"] == {"method": "PUT", "url": "ImagingStudy/s1", "ifMatch": 'W/"1"'}
    assert update["resource"]["description"] == "CT"
    assert (result.imaging_study_id, result.wrote) == ("s1", True)


def test_the_order_search_rides_in_the_batch_of_the_patient_and_study_searches() -> None:
    order = {"type": "ServiceRequest", "identifier": {"system": "urn:acc", "value": "A1"}}
    batches: list[list[str]] = []
    sent: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["type"] == "batch":
            batches.append([e["request"]["url"] for e in body["entry"]])
            found = batch_answer([stored(PATIENT, "p1")], [])
            found["entry"].append(
                {"response": {"status": "200 OK"}, "resource": searchset({"id": "sr7"})}
            )
            return httpx.Response(200, json=found)
        sent.append(body)
        return httpx.Response(200, json=tx_answer(("201 Created", "ImagingStudy/s1")))

    study = {**STUDY, "basedOn": [order]}
    writer(Counting(answer)).upsert_study(MappedStudy("1.2.3", PATIENT, study, "urn:uuid:p", ()))
    assert batches == [
        [
            "Patient?identifier=urn:s|P1",
            "ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2.3",
            "ServiceRequest?identifier=urn:acc|A1",
        ]
    ]  # one request for all three searches
    (tx,) = sent
    assert tx["entry"][0]["resource"]["basedOn"] == [{**order, "reference": "ServiceRequest/sr7"}]
