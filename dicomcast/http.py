"""HTTP plumbing shared by the DICOM and FHIR clients: error classes and short retries
(how requests log in is `dicomcast.auth`).

Responses are classified by what the caller should do (see `dicomcast.errors`): transport
errors, 429 and 5xx are retriable; a 412 is a conflict to re-read; other 4xx are the study's.
Retries here are short and in-process (seconds); longer outages become durable per-study
backoff in the state DB, so a worker never sleeps minutes inside one request.
"""

from __future__ import annotations

import email.utils
import functools
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from dicomcast.errors import ConfigError, FhirConflict, Rejected, RetriableError
from dicomcast.urls import mask_url

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
    """The words of an OperationOutcome body (severity, code, `details.text` where many
    servers put the message, diagnostics), or the start of whatever came back."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        parts = [
            " ".join(str(text) for text in _issue_words(i) if text)
            for i in body.get("issue", [])
            if isinstance(i, dict)
        ]
        return "; ".join(parts)[:2000]
    return str(body)[:500]


def _issue_words(issue: dict[str, Any]) -> list[Any]:
    details = issue.get("details")
    text = details.get("text") if isinstance(details, dict) else None
    return [issue.get("severity"), issue.get("code"), text, issue.get("diagnostics")]


# FHIR's IssueType codes: a fixed vocabulary, safe to log (a server's diagnostics are not).
ISSUE_CODES = frozenset(
    {
        "invalid",
        "structure",
        "required",
        "value",
        "invariant",
        "security",
        "login",
        "unknown",
        "expired",
        "forbidden",
        "suppressed",
        "processing",
        "not-supported",
        "duplicate",
        "multiple-matches",
        "not-found",
        "deleted",
        "too-long",
        "code-invalid",
        "extension",
        "too-costly",
        "business-rule",
        "conflict",
        "transient",
        "lock-error",
        "no-store",
        "exception",
        "timeout",
        "incomplete",
        "throttled",
        "informational",
    }
)


def issue_codes(response: httpx.Response) -> str:
    """` (invalid, required)`: the OperationOutcome's issue codes, known ones only."""
    try:
        body = response.json()
    except ValueError:
        return ""
    issues = body.get("issue") if isinstance(body, dict) else None
    codes = {
        i.get("code")
        for i in (issues if isinstance(issues, list) else [])
        if isinstance(i, dict) and i.get("code") in ISSUE_CODES
    }
    return f" ({', '.join(sorted(str(c) for c in codes))})" if codes else ""


ID_IN_USE = "already in use"  # "Assigned ID is already in use": a create that lost a race


def classify(
    response: httpx.Response,
    what: str,
    unavailable: type[RetriableError],
    rejected: type[Rejected],
) -> None:
    """Raise the error class that says what to do with this response; return if it is fine.
    Messages name the status and issue codes only; the server's words go in `detail`."""
    status = response.status_code
    if status < 300:
        return
    if status < 400:
        # Redirects are never followed (a token must not travel to another host): the
        # server is misconfigured or not the one we think, for every study alike.
        raise unavailable(
            f"{what}: HTTP {status} redirect, not followed", outage=True, status=status
        )
    if status in RETRY_STATUSES:
        raise unavailable(
            f"{what}: HTTP {status}{issue_codes(response)}",
            retry_after=retry_after_seconds(response),
            outage=status in OUTAGE_STATUSES,
            status=status,
            detail=outcome_text(response),
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
    if status == 400 and ID_IN_USE in outcome_text(response).lower():
        # Medplum under concurrent conditional creates: a race lost, not a bad resource.
        raise FhirConflict(f"{what}: HTTP 400, the assigned id was taken concurrently", status=400)
    raise rejected(
        f"{what}: HTTP {status}{issue_codes(response)}",
        status=status,
        outcome=outcome_text(response),
    )


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
    sleep: Callable[[float], None] = time.sleep  # how a wait is waited (tests: recorded)

    def call(self, fn: Callable[[], T]) -> T:
        return self._retrying.copy()(fn)  # a copy per call: safe in threads, and nested

    @functools.cached_property
    def _retrying(self) -> Retrying:
        """Built once (copying it is cheaper than building it for every request)."""
        return Retrying(
            retry=retry_if_exception(_worth_retrying),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.max_delay),
            wait=_wait(
                wait_exponential_jitter(multiplier=self.base, max=16 * self.base, jitter=self.base)
            ),
            reraise=True,
            sleep=self.sleep,
        )


ClientCert = tuple[str, str]  # (certificate chain PEM file, private key PEM file)


@functools.cache
def tls_context(verify: bool | str, client_cert: ClientCert | None = None) -> ssl.SSLContext | bool:
    """One TLS context per verification setting and client certificate, shared by every
    client (building one loads the CA bundle: tens of milliseconds each, at every start).
    A client certificate is presented to servers behind a mutual-TLS gateway."""
    if verify is False and client_cert is None:
        return False
    try:
        if isinstance(verify, str):  # a CA bundle file
            context = ssl.create_default_context(cafile=verify)
        elif verify:
            context = httpx.create_ssl_context()  # certifi's CAs, as httpx would use
        else:  # verification off (warned at start-up), but a certificate to present
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if client_cert is not None:
            context.load_cert_chain(*client_cert)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS files cannot be used: {exc}") from None
    return context


def make_client(
    base_url: str,
    *,
    auth: httpx.Auth | None,
    verify: bool | str,
    timeout: float,
    transport: httpx.BaseTransport | None = None,
    max_connections: int = 16,
    headers: dict[str, str] | None = None,
    client_cert: ClientCert | None = None,
) -> httpx.Client:
    return httpx.Client(
        base_url=base_url.rstrip("/") + "/",
        auth=auth,
        verify=tls_context(verify, client_cert),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        transport=transport,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        follow_redirects=False,
    )


@dataclass(frozen=True)
class Bounds:
    """What one request may cost: `deadline` seconds for the whole answer (a server that
    trickles it is cut off; a stalled read is cut after the client's read timeout, so at
    most twice the deadline in all), and `max_bytes` of body (None: no bound)."""

    deadline: float = 30.0
    max_bytes: int | None = None


def _tls_problem(exc: BaseException) -> str | None:
    """A certificate verification failure in an exception's chain, said plainly."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({seen.verify_message})"
        if isinstance(seen, ssl.SSLError):
            return f"TLS failed ({seen.reason or type(seen).__name__})"
        seen = seen.__cause__ or seen.__context__
    return None


def send(
    client: httpx.Client,
    method: str,
    url: str,
    what: str,
    unavailable: type[RetriableError],
    rejected: type[Rejected],
    *,
    observe: Observer | None = None,
    bounds: Bounds | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """One request with transport errors mapped to `unavailable` and the status classified;
    `observe(status or None, seconds)` is told about every attempt (for metrics). The body
    is read within `bounds`; an answer over `max_bytes` is `rejected` (413)."""
    bounds = bounds or Bounds()
    started = time.perf_counter()

    def no_answer() -> None:
        if observe:
            observe(None, time.perf_counter() - started)

    def failed(message: str, **extra: Any) -> RetriableError:
        no_answer()
        return unavailable(f"{what}: {message}", outage=True, **extra)

    try:
        request = client.build_request(method, url, **kwargs)
        response = client.send(request, stream=True)
        try:
            body = _read(response, bounds, started)
        finally:
            response.close()
    except _TooLarge:
        no_answer()
        limit = bounds.max_bytes or 0
        raise rejected(f"{what}: answer over {limit:,} bytes", status=413) from None
    except (httpx.TimeoutException, _TooSlow):
        raise failed(f"no full answer within {bounds.deadline:g} s") from None
    except httpx.ConnectError as exc:  # nothing there: say where it was looked for
        where = mask_url(f"{request.url.scheme}://{request.url.netloc.decode()}")
        problem = _tls_problem(exc) or f"ConnectError: nothing answers at {where}"
        raise failed(problem) from None
    except httpx.TransportError as exc:
        raise failed(_tls_problem(exc) or type(exc).__name__) from None
    except RetriableError as exc:
        if isinstance(exc, unavailable):
            raise
        # The login failed (token endpoint, managed identity): an outage of this server,
        # so it pauses this server and nothing else.
        raise failed(str(exc), status=exc.status) from None
    if observe:
        observe(response.status_code, time.perf_counter() - started)
    # The body is decoded already: the new response must not decode it again.
    headers = [
        (k, v)
        for k, v in response.headers.multi_items()
        if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
    ]
    answer = httpx.Response(response.status_code, headers=headers, content=body, request=request)
    classify(answer, what, unavailable, rejected)
    return answer


class _TooSlow(Exception):
    pass


class _TooLarge(Exception):
    pass


def _read(response: httpx.Response, bounds: Bounds, started: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if bounds.max_bytes is not None and size > bounds.max_bytes:
            raise _TooLarge
        if time.perf_counter() - started > bounds.deadline:
            raise _TooSlow
        chunks.append(chunk)
    return b"".join(chunks)
