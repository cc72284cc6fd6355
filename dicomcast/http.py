"""HTTP plumbing shared by the DICOM and FHIR clients: error classes and short retries
(how requests log in is `dicomcast.auth`).

Responses are classified by what the caller should do (see `dicomcast.errors`): transport
errors, 429 and 5xx are retriable; a 412 is a conflict to re-read; other 4xx are the study's.
Retries here are short and in-process (seconds); longer outages become durable per-study
backoff in the state DB, so a worker never sleeps minutes inside one request.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from dicomcast.errors import FhirConflict, Rejected, RetriableError

T = TypeVar("T")
Observer = Callable[[int | None, float], None]
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# The server as a whole is down or throttling: pause everything rather than blame a study.
OUTAGE_STATUSES = frozenset({429, 502, 503, 504})
USER_AGENT = "dicomcast/0.1"


def retry_after_seconds(response: httpx.Response) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or bad."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def outcome_text(response: httpx.Response) -> str:
    """The diagnostics of an OperationOutcome body, or the start of whatever came back."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        parts = [
            " ".join(str(i.get(k)) for k in ("severity", "code", "diagnostics") if i.get(k))
            for i in body.get("issue", [])
            if isinstance(i, dict)
        ]
        return "; ".join(parts)[:2000]
    return str(body)[:500]


def classify(
    response: httpx.Response,
    what: str,
    unavailable: type[RetriableError],
    rejected: type[Rejected],
) -> None:
    """Raise the error class that says what to do with this response; return if it is fine."""
    status = response.status_code
    if status < 400:
        return
    if status in RETRY_STATUSES:
        raise unavailable(
            f"{what}: HTTP {status} {outcome_text(response)[:200]}".rstrip(),
            retry_after=retry_after_seconds(response),
            outage=status in OUTAGE_STATUSES,
            status=status,
        )
    if status in (401, 403):
        # Credentials are wrong for every study alike: never park studies for it.
        raise unavailable(
            f"{what}: HTTP {status}, authentication or permission refused",
            outage=True,
            status=status,
        )
    if status in (409, 412):
        raise FhirConflict(f"{what}: HTTP {status} version conflict", status=status)
    raise rejected(f"{what}: HTTP {status}", status=status, outcome=outcome_text(response))


def _wait(base: Callable[[RetryCallState], float]) -> Callable[[RetryCallState], float]:
    """Exponential backoff with jitter, but never shorter than the server's Retry-After."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hint = getattr(exc, "retry_after", None) or 0.0
        return max(base(state), min(float(hint), 30.0))

    return wait


def _worth_retrying(exc: BaseException) -> bool:
    """A conflict is never resent as it was (the caller re-reads and merges first), and
    refused credentials do not get better seconds later (the worker pauses instead)."""
    return (
        isinstance(exc, RetriableError)
        and not isinstance(exc, FhirConflict)
        and exc.status not in (401, 403)
    )


@dataclass(frozen=True)
class RetryPolicy:
    """Short in-process retries of RetriableError: `attempts` tries within `max_delay`
    seconds, exponential from `base` with jitter, never sooner than a Retry-After hint."""

    attempts: int = 4
    max_delay: float = 30.0
    base: float = 0.5

    def call(self, fn: Callable[[], T]) -> T:
        retrying = retry(
            retry=retry_if_exception(_worth_retrying),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.max_delay),
            wait=_wait(
                wait_exponential_jitter(multiplier=self.base, max=16 * self.base, jitter=self.base)
            ),
            reraise=True,
        )
        return retrying(fn)()


def make_client(
    base_url: str,
    *,
    auth: httpx.Auth | None,
    verify: bool | str,
    timeout: float,
    transport: httpx.BaseTransport | None = None,
    max_connections: int = 16,
    headers: dict[str, str] | None = None,
) -> httpx.Client:
    return httpx.Client(
        base_url=base_url.rstrip("/") + "/",
        auth=auth,
        verify=verify,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        transport=transport,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        follow_redirects=False,
    )


def send(
    client: httpx.Client,
    method: str,
    url: str,
    what: str,
    unavailable: type[RetriableError],
    rejected: type[Rejected],
    *,
    observe: Observer | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One request with transport errors mapped to `unavailable` and the status classified;
    `observe(status or None, seconds)` is told about every attempt (for metrics)."""
    started = time.perf_counter()
    try:
        response = client.request(method, url, **kwargs)
    except httpx.TimeoutException:
        if observe:
            observe(None, time.perf_counter() - started)
        raise unavailable(f"{what}: timed out", outage=True) from None
    except httpx.TransportError as exc:
        if observe:
            observe(None, time.perf_counter() - started)
        raise unavailable(f"{what}: {type(exc).__name__}", outage=True) from None
    except RetriableError as exc:
        if isinstance(exc, unavailable):
            raise
        # The login failed (token endpoint, managed identity): an outage of this server,
        # so it pauses this server and nothing else.
        raise unavailable(f"{what}: {exc}", outage=True, status=exc.status) from None
    if observe:
        observe(response.status_code, time.perf_counter() - started)
    classify(response, what, unavailable, rejected)
    return response
