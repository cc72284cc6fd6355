"""The AWS HealthImaging API through boto3's `medical-imaging` client: making the client,
pacing calls within the published throttles, and what each failure means to the worker.

botocore retries throttling and 5xx itself (its `standard` mode, with backoff); what is
still failing after that is an outage (the worker pauses the source). Refused credentials
or permissions are an outage too, named with the permission the call needed. With an
endpoint override every call goes to that URL as given: no `runtime-` host prefix.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from dicomcast.config import SourceSettings
from dicomcast.errors import ConfigError, SourceRejected, SourceUnavailable

OUTAGE_CODES = frozenset(
    {"ThrottlingException", "InternalServerException", "ServiceUnavailableException"}
)
REFUSED_CODES = frozenset(
    {
        "AccessDeniedException",
        "UnrecognizedClientException",
        "ExpiredTokenException",
        "InvalidSignatureException",
    }
)


def make_client(config: SourceSettings, verify: bool | str = True) -> Any:
    """A `medical-imaging` client: region and credentials from the settings and the AWS
    chain, botocore's standard retries, the endpoint override taken as given."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(
            "an aws-healthimaging source needs boto3: pip install 'dicomcast[aws]'"
        ) from None
    settings = Config(
        region_name=config.region,
        retries={"mode": "standard", "max_attempts": 4},
        connect_timeout=10,
        read_timeout=config.timeout,
        inject_host_prefix=not config.url,
        max_pool_connections=16,
    )
    return boto3.session.Session().client(
        "medical-imaging",
        endpoint_url=config.url or None,
        config=settings,
        verify=verify,
    )


class Pace:
    """At most `rate` calls a second (a token bucket of one second's worth)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
                self.at = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                wait = (1 - self.tokens) / self.rate
            time.sleep(wait)


class Calls:
    """One data store's calls, paced and with their failures classified."""

    def __init__(self, client: Any, config: SourceSettings) -> None:
        self.client = client
        self.datastore = config.datastore_id or ""
        self.search_pace = Pace(config.search_rate)
        self.metadata_pace = Pace(config.metadata_rate)
        self.observe: Callable[[int | None, float], None] | None = None

    def search(self, criteria: dict[str, Any], token: str | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"searchCriteria": criteria, "maxResults": 50}
        if token:
            kwargs["nextToken"] = token
        return self.call("SearchImageSets", self.search_pace, **kwargs)

    def metadata(self, image_set: str, limit: int) -> bytes | None:
        """The image set's metadata blob as sent (gzip), at most `limit` bytes of it; None
        when it is gone."""
        try:
            answer = self.call("GetImageSetMetadata", self.metadata_pace, imageSetId=image_set)
        except SourceRejected as exc:
            if exc.status == 404:
                return None
            raise
        body = answer["imageSetMetadataBlob"]
        try:
            blob = bytes(body.read(limit + 1))
        finally:
            body.close()
        if len(blob) > limit:
            raise too_large(limit)
        return blob

    def datastore_properties(self) -> dict[str, Any]:
        answer = self.call("GetDatastore", self.search_pace)
        return dict(answer.get("datastoreProperties") or {})

    def call(self, operation: str, pace: Pace, **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        pace.take()
        started = time.perf_counter()
        method = getattr(self.client, _snake(operation))
        try:
            answer: dict[str, Any] = method(datastoreId=self.datastore, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            self._tell(status, started)
            raise _classified(operation, code, status) from None
        except BotoCoreError as exc:  # no connection, no credentials, a timeout
            self._tell(None, started)
            raise SourceUnavailable(
                f"HealthImaging {operation}: {type(exc).__name__}", outage=True
            ) from None
        self._tell(200, started)
        return answer

    def _tell(self, status: int | None, started: float) -> None:
        if self.observe is not None:
            self.observe(status, time.perf_counter() - started)


def _classified(operation: str, code: str, status: int) -> Exception:
    """What a HealthImaging error means: an outage to wait out, or this request's fault."""
    what = f"HealthImaging {operation}: {code or 'HTTP ' + str(status)}"
    if code in REFUSED_CODES or status in (401, 403):
        return SourceUnavailable(
            f"{what} (needs permission medical-imaging:{operation})", outage=True, status=status
        )
    if code in OUTAGE_CODES or status >= 500 or status == 429:
        return SourceUnavailable(what, outage=True, status=status)
    if code == "ResourceNotFoundException" and operation in ("GetDatastore", "SearchImageSets"):
        return SourceUnavailable(f"{what}: no such data store", outage=True, status=404)
    return SourceRejected(what, status=status or 400)


def _snake(operation: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")


def too_large(limit: int) -> SourceRejected:
    """A study whose metadata is larger than MAX_STUDY_BYTES: refused with the reason (as
    the HTTP sources refuse one), not read into memory."""
    return SourceRejected(
        f"the study's HealthImaging metadata is larger than {limit} bytes "
        "(DICOMCAST_MAX_STUDY_BYTES)",
        status=413,
    )
