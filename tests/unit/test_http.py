"""HTTP answers sorted by what to do (429 and 5xx retried within bounds, refusals kept with
the server's words, conflicts re-read), and OAuth2 client credentials cached and renewed."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from dicomcast.errors import FhirConflict, FhirRejected, FhirUnavailable
from dicomcast.fhir.client import FhirClient
from dicomcast.http import RetryPolicy


def client(handler: Any, waits: list[float] | None = None) -> FhirClient:
    """A client whose retry policy's waits are recorded in `waits`, not slept."""
    retry = RetryPolicy(sleep=(waits if waits is not None else []).append)
    return FhirClient("http://fhir.test", transport=httpx.MockTransport(handler), retry=retry)


def test_429_is_retried_honouring_retry_after() -> None:
    seen: list[float] = []
    waits: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(time.monotonic())
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "1"})
        return httpx.Response(200, json={"resourceType": "CapabilityStatement"})

    assert client(handler, waits).metadata()["resourceType"] == "CapabilityStatement"
    assert len(seen) == 2 and waits == [1.0]  # the policy waited the Retry-After


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
