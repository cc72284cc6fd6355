"""A small FHIR R4 REST client: searches (batched when the server allows), transactions,
deletes. It knows HTTP and Bundles; what to write is `upsert.py`'s business."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import httpx

from dicomcast.errors import FhirRejected, FhirUnavailable
from dicomcast.http import Observer, RetryPolicy, classify, make_client, send

FHIR_JSON = "application/fhir+json"


class FhirClient:
    """Thread-safe; one instance per FHIR server, shared by all syncers (connection reuse)."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: httpx.Auth | None = None,
        verify: bool | str = True,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 16,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.http = make_client(
            self.base_url,
            auth=auth,
            verify=verify,
            timeout=timeout,
            transport=transport,
            max_connections=max_connections,
            headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON},
        )
        self._counter = itertools.count(1)
        self._count_lock = threading.Lock()
        self.request_count = 0
        self._batch_supported = True
        # Told (resource type, status or None, seconds) of every request sent; for metrics.
        self.observe: Callable[[str, int | None, float], None] | None = None

    def close(self) -> None:
        self.http.close()

    def _observer(self, url: str, kwargs: dict[str, Any]) -> Observer | None:
        observe = self.observe
        if observe is None:
            return None
        resource_type = url.split("?")[0].split("/")[0]
        if not resource_type:
            body = kwargs.get("json")
            resource_type = body.get("type", "bundle") if isinstance(body, dict) else "bundle"

        def observer(status: int | None, seconds: float) -> None:
            observe(resource_type, status, seconds)

        return observer

    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        observer = self._observer(url, kwargs)

        def attempt() -> httpx.Response:
            with self._count_lock:
                self.request_count = next(self._counter)
            return send(
                self.http,
                method,
                url,
                what,
                FhirUnavailable,
                FhirRejected,
                observe=observer,
                **kwargs,
            )

        return self.retry.call(attempt)

    def ping(self, timeout: float = 5.0) -> str:
        """One quick, unretried GET /metadata: the readiness probe."""
        response = send(
            self.http,
            "GET",
            "metadata",
            "FHIR capability statement",
            FhirUnavailable,
            FhirRejected,
            timeout=timeout,
        )
        try:
            version = response.json().get("fhirVersion", "?")
        except (ValueError, AttributeError):
            raise FhirUnavailable("FHIR /metadata did not return JSON", outage=True) from None
        return f"FHIR {version}"

    def metadata(self) -> dict[str, Any]:
        body = self._send("GET", "metadata", "FHIR capability statement").json()
        if not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
            raise FhirUnavailable("FHIR /metadata did not return a CapabilityStatement")
        return body

    def search(self, query: str) -> list[dict[str, Any]]:
        """Matches of `Type?params` (first page; identifier searches match few)."""
        bundle = self._send("GET", query, f"search {query.split('?')[0]}").json()
        return _matches(bundle)

    def search_many(self, queries: list[str]) -> list[list[dict[str, Any]]]:
        """Several searches in one batch request; one by one on servers without batch."""
        if self._batch_supported and len(queries) > 1:
            bundle = {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [{"request": {"method": "GET", "url": q}} for q in queries],
            }
            try:
                response = self._send("POST", "", "batch search", json=bundle)
            except FhirRejected as exc:
                if exc.status not in (400, 404, 405, 422, 501):
                    raise
                self._batch_supported = False
            else:
                results = []
                for entry in response.json().get("entry", []):
                    status = str(entry.get("response", {}).get("status", "200"))
                    code = int(status.split()[0]) if status.split()[0].isdigit() else 200
                    if code >= 400:
                        classify(
                            httpx.Response(code, json=entry.get("resource")),
                            "batch search",
                            FhirUnavailable,
                            FhirRejected,
                        )
                    results.append(_matches(entry.get("resource") or {}))
                if len(results) == len(queries):
                    return results
                raise FhirUnavailable("batch search: response has the wrong number of entries")
        return [self.search(q) for q in queries]

    def transaction(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send a transaction; returns the response entries, in request order.

        `Prefer: return=minimal`: only status and location come back, not every resource
        written (a large ImagingStudy would otherwise travel twice)."""
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        body = self._send(
            "POST", "", "transaction", json=bundle, headers={"Prefer": "return=minimal"}
        ).json()
        found = body.get("entry", []) if isinstance(body, dict) else []
        if len(found) != len(entries):
            raise FhirUnavailable("transaction: response has the wrong number of entries")
        return list(found)

    def delete(self, resource_type: str, resource_id: str) -> None:
        """Delete by id; a resource already gone (404/410) counts as deleted."""
        try:
            self._send("DELETE", f"{resource_type}/{resource_id}", f"delete {resource_type}")
        except FhirRejected as exc:
            if exc.status not in (404, 410):
                raise


def _matches(bundle: Any) -> list[dict[str, Any]]:
    if not isinstance(bundle, dict):
        return []
    return [
        entry["resource"]
        for entry in bundle.get("entry", [])
        if isinstance(entry, dict)
        and isinstance(entry.get("resource"), dict)
        and entry.get("search", {}).get("mode", "match") == "match"
    ]
