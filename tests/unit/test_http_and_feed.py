"""HTTP error classes and retries, and the Orthanc change feed's corner cases (MockTransport)."""

from __future__ import annotations

import calendar
import time
from typing import Any

import httpx
import pytest

from dicomcast.config import SourceSettings
from dicomcast.errors import FhirConflict, FhirRejected, FhirUnavailable
from dicomcast.fhir.client import FhirClient
from dicomcast.sources.orthanc import OrthancSource


def client(handler: Any) -> FhirClient:
    return FhirClient("http://fhir.test", transport=httpx.MockTransport(handler))


def test_429_is_retried_honouring_retry_after() -> None:
    seen: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "1"})
        return httpx.Response(200, json={"resourceType": "CapabilityStatement"})

    assert client(handler).metadata()["resourceType"] == "CapabilityStatement"
    assert len(seen) == 2 and seen[1] - seen[0] >= 0.95


def test_5xx_and_timeouts_give_up_as_retriable_after_bounded_tries() -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] % 2:
            raise httpx.ConnectTimeout("slow")
        return httpx.Response(503)

    with pytest.raises(FhirUnavailable):
        client(handler).metadata()
    assert calls["n"] == 4


@pytest.mark.parametrize(
    ("status", "error"),
    [(412, FhirConflict), (409, FhirConflict), (422, FhirRejected), (401, FhirUnavailable)],
)
def test_status_classes(status: int, error: type[Exception]) -> None:
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(status)

    with pytest.raises(error):
        client(handler).search("Patient?identifier=a|b")
    # Nothing here is retried in-process: conflicts go back to the merge, and refused
    # credentials pause the worker instead (see test_failure_policy).
    assert calls["n"] == 1


def orthanc(handler: Any) -> OrthancSource:
    settings = SourceSettings(
        name="o",
        kind="orthanc",
        url="http://orthanc.test",
        public_url="http://orthanc.test/dicom-web",
    )
    return OrthancSource(settings, transport=httpx.MockTransport(handler))


def test_feed_maps_series_and_study_changes_to_studies_without_instance_lookups() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/changes":
            assert request.url.params["since"] == "10"
            return httpx.Response(
                200,
                json={
                    "Changes": [
                        {
                            "ChangeType": "NewInstance",
                            "ID": "i1",
                            "ResourceType": "Instance",
                            "Seq": 11,
                            "Date": "20261123T182242",
                        },
                        {
                            "ChangeType": "NewInstance",
                            "ID": "i-gone",
                            "ResourceType": "Instance",
                            "Seq": 12,
                        },
                        {
                            "ChangeType": "NewSeries",
                            "ID": "s1",
                            "ResourceType": "Series",
                            "Seq": 14,
                            "Date": "20261123T182242",
                        },
                        {
                            "ChangeType": "StableSeries",
                            "ID": "s1",
                            "ResourceType": "Series",
                            "Seq": 15,
                        },
                        {
                            "ChangeType": "StableStudy",
                            "ID": "st2",
                            "ResourceType": "Study",
                            "Seq": 17,
                        },
                        {
                            "ChangeType": "NewPatient",
                            "ID": "p1",
                            "ResourceType": "Patient",
                            "Seq": 18,
                        },
                        {"ChangeType": "NewInstance", "ResourceType": "Instance", "Seq": 19},
                    ],
                    "Done": True,
                    "Last": 19,
                },
            )
        if path == "/series/s1":
            series_reads.append(path)
            return httpx.Response(200, json={"ParentStudy": "st1"})
        assert not path.startswith("/instances"), "instances are never looked up one by one"
        return httpx.Response(404)

    series_reads: list[str] = []
    page = orthanc(handler).read_changes("10", 100)
    assert [m.study_key for m in page.marks] == ["st1", "st1", "st2"]
    assert page.marks[0].event_time == calendar.timegm((2026, 11, 23, 18, 22, 42, 0, 0, 0))
    assert (page.cursor, page.done, page.reset, page.changes_read) == ("19", True, False, 7)
    assert series_reads == ["/series/s1"]  # a series' study is read once, then remembered


def test_feed_behind_the_cursor_is_reported_as_a_reset() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"Changes": [], "Done": True, "Last": 3})

    page = orthanc(handler).read_changes("500", 100)
    assert page.reset and page.cursor == "0"


def test_empty_page_keeps_cursor_and_gaps_are_skipped() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"Changes": [], "Done": True, "Last": 500})

    page = orthanc(handler).read_changes("500", 100)
    assert not page.reset and page.cursor == "500" and page.marks == []


def test_oauth_client_credentials_token_is_cached_and_renewed_on_401() -> None:
    from dicomcast.auth import fhir_auth
    from dicomcast.config import load_settings

    issued: list[str] = []
    revoked: set[str] = set()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            body = dict(httpx.QueryParams(request.content.decode()))
            assert body["grant_type"] == "client_credentials" and body["client_secret"] == "s3"
            issued.append(f"tok{len(issued)}")
            return httpx.Response(200, json={"access_token": issued[-1], "expires_in": 3600})
        token = request.headers["Authorization"].removeprefix("Bearer ")
        if token in revoked or token not in issued:
            return httpx.Response(401)
        return httpx.Response(200, json={"resourceType": "CapabilityStatement"})

    transport = httpx.MockTransport(handler)
    settings = load_settings(
        None,
        fhir_url="http://fhir.test",
        fhir_oauth_token_url="http://idp.test/token",
        fhir_client_id="dicomcast",
        fhir_client_secret="s3",
        fhir_scope="system/*.write",
    )
    fhir = FhirClient("http://fhir.test", auth=fhir_auth(settings, transport), transport=transport)
    fhir.metadata()
    fhir.metadata()
    assert issued == ["tok0"]  # cached, not fetched per request
    revoked.add("tok0")
    fhir.metadata()
    assert issued == ["tok0", "tok1"]  # a 401 renews the token once
    assert "s3" not in str(settings.public_dict())
