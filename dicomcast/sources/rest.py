"""The JSON-over-HTTP reads every source makes: short retries, errors classified for the
worker (an outage pauses, a refusal is the study's), 404 as an ordinary answer, and a
parse hook that drops unneeded DICOM tags while the body is decoded."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Self

import httpx
import orjson

from dicomcast.auth import source_auth
from dicomcast.config import SourceSettings
from dicomcast.errors import SourceRejected, SourceUnavailable
from dicomcast.http import Bounds, Observer, RetryPolicy, make_client, send
from dicomcast.sources.base import ReadPlan, SourceContext
from dicomcast.studyview import DatasetFilter, dataset_filter


class NotFound(Exception):
    """The resource is gone (404): normal for anything deleted after its feed entry."""


class RestReader:
    """GETs against one server's base URL; `server` names it in error messages."""

    def __init__(
        self, http: httpx.Client, server: str, retry: RetryPolicy, bounds: Bounds | None = None
    ) -> None:
        self.http = http
        self.server = server
        self.retry = retry
        self.bounds = bounds or Bounds()
        self.observe: Observer | None = None  # told of every request, for metrics

    def get(
        self,
        path: str,
        *,
        object_hook: Callable[[dict[str, Any]], Any] | None = None,
        headers: dict[str, str] | None = None,
        **params: Any,
    ) -> Any:
        """The decoded JSON at `path`; `NotFound` on 404, `SourceUnavailable` when the
        server fails or answers something that is not JSON."""

        def once() -> Any:
            try:
                response = self.request("GET", path, params=params or None, headers=headers)
            except SourceRejected as exc:
                if exc.status == 404:
                    raise NotFound(path) from None
                raise
            if response.status_code == 204 or not response.content:
                return None  # DICOMweb searches answer 204 when nothing matches
            try:
                return decode(response.content, object_hook)
            except (ValueError, RecursionError):
                # Not JSON (or nested past any real answer): not a working server's answer.
                raise SourceUnavailable(f"{self.server} GET {path}: answer is not JSON") from None

        return self.retry.call(once)

    def request(
        self, method: str, path: str, *, bounds: Bounds | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One classified request, not retried (the caller decides); within `bounds`, else
        the source's own."""
        return send(
            self.http,
            method,
            path,
            f"{self.server} {method} {path}",
            SourceUnavailable,
            SourceRejected,
            observe=self.observe,
            bounds=bounds or self.bounds,
            **kwargs,
        )


FAST_DECODE_MAX = 1 << 20  # larger answers are filtered while parsed, to bound memory


def decode(content: bytes, object_hook: Callable[[dict[str, Any]], Any] | None) -> Any:
    """JSON, decoded by orjson (several times faster) and then filtered, unless it is
    large, when the standard decoder filters while it parses; anything orjson refuses
    is left to the standard decoder to accept or to refuse."""
    if len(content) <= FAST_DECODE_MAX and (
        object_hook is None or isinstance(object_hook, DatasetFilter)
    ):
        try:
            decoded = orjson.loads(content)
        except orjson.JSONDecodeError:
            return json.loads(content, object_hook=object_hook)
        return decoded if object_hook is None else object_hook.tree(decoded)
    return json.loads(content, object_hook=object_hook)


MAX_SEQUENCE = 10**18  # a feed position past this is no real archive's


def sequence_number(value: Any) -> int | None:
    """A feed sequence number, or None for anything that is not a plausible non-negative
    integer (`"²"` passes `str.isdigit`; a 4,300-digit number cannot even be parsed)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        value = int(value)
    if isinstance(value, int) and 0 <= value < MAX_SEQUENCE:
        return value
    return None


class RestSource:
    """What the HTTP sources share: one connection pool logged in as the settings say,
    short retries, and a request counter for metrics."""

    server = "DICOM server"  # names the server in error messages

    def __init__(
        self,
        settings: SourceSettings,
        *,
        verify: bool | str = True,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
        auth: httpx.Auth | None = None,
        max_bytes: int | None = None,
        plan: ReadPlan | None = None,
        observe: Observer | None = None,
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self.plan = plan or ReadPlan()  # what to keep of each answer (DICOMweb answers whole)
        auth = auth or source_auth(settings, verify=verify, transport=transport)
        # The source's own TLS files, as for DICOM TLS: its CA bundle, and a certificate for
        # a server behind a mutual-TLS gateway.
        cert = (
            (settings.tls_cert, settings.tls_key)
            if settings.tls_cert and settings.tls_key
            else None
        )
        self.http = make_client(
            settings.url,
            auth=auth,
            verify=settings.tls_ca_bundle or verify,
            timeout=timeout,
            transport=transport,
            client_cert=cert,
        )
        bounds = Bounds(deadline=timeout, max_bytes=max_bytes)
        self.rest = RestReader(self.http, self.server, retry or RetryPolicy(), bounds)
        self.rest.observe = observe

    @classmethod
    def from_context(cls, settings: SourceSettings, context: SourceContext, **extra: Any) -> Self:
        """The source as the registry builds it: the assembly's TLS, timeout, retries,
        answer bound, read plan and request observer (and, in tests, transport); `extra`
        goes to a kind's own constructor."""
        return cls(
            settings,
            **extra,
            verify=context.verify,
            timeout=context.timeout,
            transport=context.transport,
            retry=context.retry,
            max_bytes=context.max_bytes,
            plan=context.plan,
            observe=context.observe,
        )

    def metadata_filter(self) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
        """The JSON object hook that keeps only what the mappings read (None: keep all)."""
        if self.plan.tags is None:
            return None
        return dataset_filter(self.plan.tags, self.plan.content_of)

    def close(self) -> None:
        self.http.close()
