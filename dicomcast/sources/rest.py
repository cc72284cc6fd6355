"""The JSON-over-HTTP reads every source makes: short retries, errors classified for the
worker (an outage pauses, a refusal is the study's), 404 as an ordinary answer, and a
parse hook that drops unneeded DICOM tags while the body is decoded."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from dicomcast.errors import SourceRejected, SourceUnavailable
from dicomcast.http import Observer, RetryPolicy, send


class NotFound(Exception):
    """The resource is gone (404): normal for anything deleted after its feed entry."""


class RestReader:
    """GETs against one server's base URL; `server` names it in error messages."""

    def __init__(self, http: httpx.Client, server: str, retry: RetryPolicy) -> None:
        self.http = http
        self.server = server
        self.retry = retry
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
                return json.loads(response.content, object_hook=object_hook)
            except ValueError:
                raise SourceUnavailable(f"{self.server} GET {path}: answer is not JSON") from None

        return self.retry.call(once)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One classified request, not retried (the caller decides)."""
        return send(
            self.http,
            method,
            path,
            f"{self.server} {method} {path}",
            SourceUnavailable,
            SourceRejected,
            observe=self.observe,
            **kwargs,
        )
