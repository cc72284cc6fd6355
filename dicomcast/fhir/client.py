"""A small FHIR R4 REST client: searches (batched when the server allows), transactions,
deletes. It knows HTTP and Bundles; what to write is `upsert.py`'s business."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from dicomcast.errors import FhirRejected, FhirUnavailable
from dicomcast.http import (
    Bounds,
    ClientCert,
    Observer,
    RetryPolicy,
    classify,
    make_client,
    send,
)
from dicomcast.urls import mask_url

FHIR_JSON = "application/fhir+json"
log = logging.getLogger(__name__)


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
        prefer_minimal: bool = True,
        client_cert: ClientCert | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.prefer_minimal = prefer_minimal
        self.retry = retry or RetryPolicy()
        self.bounds = Bounds(deadline=timeout)
        self.http = make_client(
            self.base_url,
            auth=auth,
            verify=verify,
            timeout=timeout,
            transport=transport,
            max_connections=max_connections,
            headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON},
            client_cert=client_cert,
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
        if "json" in kwargs:  # encoded once, by orjson (bodies are large: a study's instances)
            kwargs["content"] = orjson.dumps(kwargs.pop("json"))

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
                bounds=self.bounds,
                **kwargs,
            )

        return self.retry.call(attempt)

    def _json(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        """The decoded JSON answer. Anything else (an HTML page from a proxy, a login
        form) means the server we reach is not a working FHIR server: an outage."""

        return self._decode(self._send(method, url, what, **kwargs), what)

    @staticmethod
    def _decode(response: httpx.Response, what: str) -> Any:
        try:
            return orjson.loads(response.content)
        except (ValueError, RecursionError):
            kind = response.headers.get("content-type", "no content type").split(";")[0]
            raise FhirUnavailable(
                f"{what}: answer is not FHIR JSON ({kind})",
                outage=True,
                status=response.status_code,
            ) from None

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
            bounds=Bounds(deadline=timeout),
        )
        try:
            version = response.json().get("fhirVersion", "?")
        except (ValueError, AttributeError):
            raise FhirUnavailable("FHIR /metadata did not return JSON", outage=True) from None
        return f"FHIR {version}"

    def metadata(self) -> dict[str, Any]:
        try:
            body = self._json("GET", "metadata", "FHIR capability statement")
        except FhirRejected as exc:
            if exc.status == 404:  # no FHIR base, or a gateway that hides its statement
                raise FhirRejected(f"{exc}: {self.not_a_base()}", status=404) from None
            raise
        if not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
            raise FhirUnavailable(
                f"FHIR /metadata did not return a CapabilityStatement: {self.not_a_base()}",
                outage=True,
            )
        return body

    def not_a_base(self) -> str:
        """What to tell someone whose FHIR URL answers as no FHIR base does."""
        base = mask_url(str(self.http.base_url).rstrip("/"))
        return f"is DICOMCAST_FHIR_URL ({base}) the FHIR base, often ending in /fhir?"

    def search(self, query: str) -> list[dict[str, Any]]:
        """Matches of `Type?params` (first page; identifier searches match few)."""
        what = f"search {query.split('?')[0]}"
        return _matches(self._json("GET", query, what), what)

    def search_pages(self, query: str, limit: int = 100_000) -> list[dict[str, Any]]:
        """Every match of `Type?params`, following the server's `next` links (only to
        this server: a link elsewhere would carry our credentials away), up to `limit`."""
        what = f"search {query.split('?')[0]}"
        found: list[dict[str, Any]] = []
        url: str | None = query
        while url and len(found) < limit:
            bundle = self._json("GET", url, what)
            found += _matches(bundle, what)
            links = bundle.get("link") if isinstance(bundle, dict) else None
            url = next(
                (
                    str(link.get("url"))
                    for link in links or []
                    if isinstance(link, dict) and link.get("relation") == "next"
                ),
                None,
            )
            if url and not url.startswith(self.base_url + "/"):
                raise FhirUnavailable(f"{what}: the next page is on another server", outage=True)
        return found[:limit]

    def search_many(self, queries: list[str]) -> list[list[dict[str, Any]]]:
        """Several searches in one batch request; one by one on servers without batch."""
        if self._batch_supported and len(queries) > 1:
            bundle = {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": [{"request": {"method": "GET", "url": q}} for q in queries],
            }
            try:
                answer = self._json("POST", "", "batch search", json=bundle)
            except FhirRejected as exc:
                if exc.status not in (400, 404, 405, 422, 501):
                    raise
                self._batch_supported = False
            else:
                results = []
                for entry in _entries(answer, "batch search"):
                    code = _entry_status(entry, missing="200")
                    if not 200 <= code < 600:
                        raise FhirUnavailable(
                            "batch search: an entry has no valid status", outage=True
                        )
                    if code >= 400:
                        _raise_for_entry(entry, code, "batch search")
                    results.append(_matches(entry.get("resource"), "batch search"))
                if len(results) == len(queries):
                    return results
                raise FhirUnavailable("batch search: response has the wrong number of entries")
        return [self.search(q) for q in queries]

    def transaction(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send a transaction; returns the response entries, in request order.

        `Prefer: return=minimal` (unless turned off): only status and location come back,
        not every resource written (a large ImagingStudy would otherwise travel twice). A
        server that takes it to mean an empty body (Medplum) gets entries with no status:
        callers re-read what they need. Every entry's status is checked: a server that does
        not run transactions atomically answers 200 with a failed entry inside, and that
        entry's failure is the transaction's (the next attempt repairs what was stored)."""
        return self._bundle("transaction", entries)

    def batch(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send writes as a batch (each entry on its own, none pointing at another); checked
        as a transaction's: a failed entry raises, after the others were stored."""
        return self._bundle("batch", entries)

    def _bundle(self, kind: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        bundle = {"resourceType": "Bundle", "type": kind, "entry": entries}
        minimal = self.prefer_minimal
        headers = {"Prefer": "return=minimal"} if minimal else {}
        response = self._send("POST", "", kind, json=bundle, headers=headers)
        if not response.content.strip():
            if minimal:
                self._answers_minimal_empty()
            return [{"response": {}} for _ in entries]  # unproven: the caller reads back
        body = self._decode(response, kind)
        found = _entries(body, kind)
        if len(found) != len(entries):
            raise FhirUnavailable(f"{kind}: response has the wrong number of entries")
        failed: FhirRejected | None = None
        for number, (sent, answer) in enumerate(zip(entries, found, strict=True), start=1):
            try:
                _check_entry(sent, answer, f"{kind} entry {number}")
            except FhirRejected as exc:
                failed = failed or exc
        if failed is not None:
            # On a server that does not run transactions atomically the other entries
            # were stored: say which were created, so they are not left dangling.
            failed.stored = [a for a in found if _entry_status(a, missing="") == 201]
            raise failed
        return list(found)

    def _answers_minimal_empty(self) -> None:
        """An empty answer to `Prefer: return=minimal` proves nothing: Medplum gives it even
        when entries inside failed. Ask for whole answers (per-entry statuses) from now on."""
        with self._count_lock:
            if not self.prefer_minimal:
                return
            self.prefer_minimal = False
        log.warning(
            "the FHIR server answers a Bundle sent with Prefer: return=minimal with an empty "
            "body, which proves nothing: asking for whole answers from now on"
        )

    def entry_request(self, entry: dict[str, Any]) -> dict[str, Any]:
        """One Bundle entry sent as its own request (for a server without transactions or
        batches); answered as a transaction-response entry would be."""
        request = entry["request"]
        method, url = str(request["method"]), str(request["url"])
        headers = {"Prefer": "return=minimal"} if self.prefer_minimal else {}
        if request.get("ifNoneExist"):
            headers["If-None-Exist"] = str(request["ifNoneExist"])
        if request.get("ifMatch"):
            headers["If-Match"] = str(request["ifMatch"])
        body = {"json": entry["resource"]} if "resource" in entry else {}
        what = f"{method.lower()} {url.split('/')[0].split('?')[0]}"
        try:
            response = self._send(method, url, what, headers=headers, **body)
        except FhirRejected as exc:
            if method == "DELETE" and exc.status in (404, 410):
                return {"response": {"status": str(exc.status)}}
            raise
        location = response.headers.get("Location") or response.headers.get("Content-Location")
        answer: dict[str, Any] = {
            "response": {"status": str(response.status_code), "location": location or ""}
        }
        if response.content.strip():
            resource = self._decode(response, what)
            if isinstance(resource, dict) and resource.get("resourceType") != "OperationOutcome":
                answer["resource"] = resource
        return answer

    def resolves(self, reference: str) -> bool:
        """Whether a literal reference (`Patient/123`) reads as a resource now."""
        if reference.count("/") != 1 or reference.startswith(("urn:", "#", "http")):
            return True  # not a literal reference on this server: nothing to check
        try:
            self._send("GET", reference, f"read {reference.split('/')[0]}")
        except FhirRejected as exc:
            if exc.status in (404, 410):
                return False
            raise
        return True

    def delete(self, resource_type: str, resource_id: str) -> None:
        """Delete by id; a resource already gone (404/410) counts as deleted."""
        try:
            self._send("DELETE", f"{resource_type}/{resource_id}", f"delete {resource_type}")
        except FhirRejected as exc:
            if exc.status not in (404, 410):
                raise


def _check_entry(sent: dict[str, Any], answer: dict[str, Any], what: str) -> None:
    """Raise what a failed entry of a transaction-response means (as if it were the
    answer); a DELETE of what is gone already (404/410) succeeded."""
    code = _entry_status(answer, missing="")
    if code < 300:
        return  # no status at all: unknown, the callers re-read
    method = (sent.get("request") or {}).get("method")
    if method == "DELETE" and code in (404, 410):
        return
    _raise_for_entry(answer, code, what)


def _entry_status(entry: dict[str, Any], *, missing: str) -> int:
    """The HTTP status of a batch- or transaction-response entry (`missing` when it has
    none); 0 when it is not one."""
    response = entry.get("response")
    status = str(response.get("status", missing)) if isinstance(response, dict) else ""
    return int(status[:3]) if status[:3].isascii() and status[:3].isdigit() else 0


def _raise_for_entry(entry: dict[str, Any], code: int, what: str) -> None:
    """Raise what a failed entry means, as if its status and OperationOutcome (the
    response's `outcome`, else the entry's resource) had been the answer."""
    response = entry.get("response")
    outcome = response.get("outcome") if isinstance(response, dict) else None
    body = outcome if isinstance(outcome, dict) else entry.get("resource")
    failed = httpx.Response(code, json=body if isinstance(body, dict) else {})
    classify(failed, what, FhirUnavailable, FhirRejected)


def _entries(bundle: Any, what: str) -> list[dict[str, Any]]:
    """The entries of a Bundle answer. Anything else is not a working FHIR server's answer
    (an outage): guessing "no entries" could make a search look empty and create a twin."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirUnavailable(f"{what}: answer is not a FHIR Bundle", outage=True)
    entries = bundle.get("entry", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise FhirUnavailable(f"{what}: the Bundle's entries are malformed", outage=True)
    return entries


def _matches(bundle: Any, what: str) -> list[dict[str, Any]]:
    """The matches of a searchset (included resources left out)."""
    found = []
    for entry in _entries(bundle, what):
        search = entry.get("search")
        mode = search.get("mode", "match") if isinstance(search, dict) else "match"
        if isinstance(entry.get("resource"), dict) and mode == "match":
            found.append(entry["resource"])
    return found
