"""FHIR servers that answer otherwise than sekmet does, as Medplum was seen to (issue 13):
an empty body for a transaction sent with `Prefer: return=minimal`, a transaction not run
atomically (200 with a failed entry inside), and the message in `details.text`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from dicomcast.http import outcome_text
from dicomcast.sandbox.samples import bulk_studies
from tests.fakes import FakeSource, dicom_json, fake_worker
from tests.fhir_fake import FakeFhir

MESSAGE = "Duplicate key violates unique constraint"


def _bundle_type(request: httpx.Request) -> str | None:
    try:
        body = json.loads(request.content)
    except ValueError:
        return None
    return body.get("type") if isinstance(body, dict) else None


class EmptyWhenMinimal(httpx.MockTransport):
    """Answers a transaction sent with `Prefer: return=minimal` with its status and no
    body at all (the writes are stored), as Medplum does."""

    def __init__(self, inner: FakeFhir) -> None:
        self.inner = inner

        def answer(request: httpx.Request) -> httpx.Response:
            response = inner.handle_request(request)
            minimal = request.headers.get("Prefer") == "return=minimal"
            if minimal and _bundle_type(request) == "transaction":
                return httpx.Response(response.status_code, content=b"")
            return response

        super().__init__(answer)


class NotAtomic(httpx.MockTransport):
    """Runs a transaction's entries one by one: the first `failures` ImagingStudy entries
    answer 409 inside a 200 (a serialization failure), the other entries are stored."""

    def __init__(self, inner: FakeFhir, failures: int = 1) -> None:
        self.inner = inner
        self.failures = failures

        def answer(request: httpx.Request) -> httpx.Response:
            if _bundle_type(request) != "transaction" or not self.failures:
                return inner.handle_request(request)
            body = json.loads(request.content)
            entries: list[dict[str, Any]] = body["entry"]
            failing = [
                n for n, e in enumerate(entries) if e["resource"]["resourceType"] == "ImagingStudy"
            ]
            if not failing:
                return inner.handle_request(request)
            self.failures -= 1
            rest = [e for n, e in enumerate(entries) if n not in failing]
            stored = inner.handle_request(
                httpx.Request(
                    "POST", request.url, json={**body, "entry": rest}, headers=request.headers
                )
            )
            answers = list(json.loads(stored.content)["entry"])
            for n in failing:
                issue = {"severity": "error", "code": "conflict", "details": {"text": MESSAGE}}
                answers.insert(
                    n,
                    {
                        "response": {
                            "status": "409 Conflict",
                            "outcome": {"resourceType": "OperationOutcome", "issue": [issue]},
                        }
                    },
                )
            return httpx.Response(200, json={**json.loads(stored.content), "entry": answers})

        super().__init__(answer)


def one_study() -> FakeSource:
    (spec,) = bulk_studies(1, 3, patients=1, prefix="quirk")
    return FakeSource({spec.study_uid: dicom_json(spec)})


def test_an_empty_answer_to_a_minimal_transaction_is_a_write_and_is_re_read(
    tmp_path: Path,
) -> None:
    fhir = FakeFhir()
    worker = fake_worker(tmp_path, EmptyWhenMinimal(fhir), one_study())
    try:
        assert worker.run_once() == 0
        assert [len(fhir.all(k)) for k in ("Endpoint", "Patient", "ImagingStudy")] == [1, 1, 1]
        (study,) = fhir.all("ImagingStudy")
        (patient,) = fhir.all("Patient")
        assert study["subject"]["reference"] == f"Patient/{patient['id']}"
        versions = fhir.versions()
        assert worker.run_once() == 0  # again: nothing changed, nothing written
        assert fhir.versions() == versions
    finally:
        worker.close()
        worker.app.close()


def test_a_failed_entry_in_a_200_transaction_fails_the_write_and_the_retry_repairs_it(
    tmp_path: Path,
) -> None:
    fhir = FakeFhir()
    server = NotAtomic(fhir, failures=0)
    source = one_study()
    worker = fake_worker(tmp_path, server, source)
    try:
        assert worker.run_once() == 0
        (key,) = source.studies
        (spec,) = bulk_studies(1, 4, patients=1, prefix="quirk")  # one more instance
        source.studies[key] = dicom_json(spec)
        source.feed.append(key)
        server.failures = 1  # the update's entry fails inside a 200
        assert worker.run_once() == 0
        (study,) = fhir.all("ImagingStudy")
        assert study["numberOfInstances"] == 4  # not a lost update: the retry wrote it
        assert worker.totals["synced"] == 2
        assert server.failures == 0  # the failure did happen
    finally:
        worker.close()
        worker.app.close()


def test_an_outcomes_details_text_reaches_the_operator() -> None:
    issue = {"severity": "error", "code": "invalid", "details": {"text": MESSAGE}}
    response = httpx.Response(400, json={"resourceType": "OperationOutcome", "issue": [issue]})
    assert outcome_text(response) == f"error invalid {MESSAGE}"
