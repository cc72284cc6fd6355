"""A stateful in-memory FHIR R4 server for unit tests, as an httpx MockTransport.

It keeps resources with ids and versions and answers what dicomcast sends, the way the
FHIR REST spec says a server does:
- `GET /metadata`; `GET Type?identifier=[system|]value` (token search, escapes honoured),
  `GET Observation?part-of=ImagingStudy/id`;
- `POST /` batch (searches) and transaction: conditional create (`ifNoneExist`: 0 matches
  creates, 1 returns it with 200, 2+ fails with 412), `PUT` with `If-Match` (412 when the
  version moved), `DELETE`; `urn:uuid:` fullUrls resolved in references; all or nothing
  (any failing entry rolls the whole transaction back);
- `DELETE Type/id`; batches of writes (each entry on its own); single requests
  (`POST Type` with `If-None-Exist`, `PUT Type/id` with `If-Match`).
Capabilities: `bundles` (the Bundle types run; others are refused with 400),
`conditional_create` and `if_match` (off: the server ignores them, as one without them
does) and `statement` (the CapabilityStatement it answers; default: an empty one; None:
a 404).
Faults: `fail_next` answers the next requests with the given statuses (or responses), and
`echo` makes those error answers quote the request body, as some servers do; `reject` is asked
about every resource a transaction writes and may refuse it (400 with an OperationOutcome);
`before_transaction` runs before each transaction (another system writing meanwhile);
`status_for` may answer a transaction with an error status of its choosing.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx

Resource = dict[str, Any]


class TransactionFailed(Exception):
    def __init__(self, status: int, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.status = status


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _split_token(token: str) -> tuple[str | None, str]:
    """`system|value` (escaped `\\|` is not a separator); no `|`: any system."""
    parts = re.split(r"(?<!\\)\|", token, maxsplit=1)
    if len(parts) == 1:
        return None, _unescape(parts[0])
    return _unescape(parts[0]), _unescape(parts[1])


def outcome(status: int, diagnostics: str) -> httpx.Response:
    issue = {"severity": "error", "code": "processing", "diagnostics": diagnostics}
    return httpx.Response(status, json={"resourceType": "OperationOutcome", "issue": [issue]})


class FakeFhir(httpx.MockTransport):
    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Resource]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path or bundle type)
        self.fail_next: list[int | httpx.Response] = []
        self.echo = False
        self.reject: Callable[[Resource], str | None] = lambda _resource: None
        self.before_transaction: Callable[[Resource], None] = lambda _bundle: None
        self.status_for: Callable[[Resource], int | None] = lambda _bundle: None
        self.bundles = {"transaction", "batch"}
        self.conditional_create = True
        self.if_match = True
        self.statement: Resource | None = {
            "resourceType": "CapabilityStatement",
            "fhirVersion": "4.0.1",
        }
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # one request at a time, as a database would order them
        super().__init__(self._locked)

    # --- what tests look at

    def all(self, resource_type: str) -> list[Resource]:
        return list(self.resources.get(resource_type, {}).values())

    def versions(self) -> dict[str, str]:
        """`Type/id` -> versionId of everything stored: equal before and after = no write."""
        return {
            f"{t}/{r['id']}": r["meta"]["versionId"]
            for t, stored in self.resources.items()
            for r in stored.values()
        }

    def counts(self) -> Counter[str]:
        return Counter(kind for kind, _ in self.requests)

    def search(self, resource_type: str, token: str) -> list[Resource]:
        system, value = _split_token(token)
        return [
            r
            for r in self.all(resource_type)
            if any(
                i.get("value") == value and (system is None or i.get("system") == system)
                for i in r.get("identifier") or []
                if isinstance(i, dict)
            )
        ]

    # --- HTTP

    def _locked(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            return self._handle(request)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.rstrip("/").rsplit("/fhir", 1)[-1].lstrip("/")
        body = json.loads(request.content) if request.content else None
        is_bundle = isinstance(body, dict) and body.get("resourceType") == "Bundle"
        kind = body["type"] if is_bundle and body else path.split("?")[0].split("/")[0]
        self.requests.append((request.method, str(kind)))
        if self.fail_next:
            fault = self.fail_next.pop(0)
            if isinstance(fault, httpx.Response):
                return fault
            said = request.content.decode() if self.echo else "injected fault"
            return outcome(fault, said)
        if request.method == "GET" and path == "metadata":
            if self.statement is None:
                return outcome(404, "this server does not show its CapabilityStatement")
            return httpx.Response(200, json=self.statement)
        if request.method == "GET" and path.count("/") == 1:  # a read by id
            resource_type, _, rid = path.partition("/")
            found = self.resources.get(resource_type, {}).get(rid)
            return httpx.Response(200, json=found) if found else outcome(404, "no such resource")
        if request.method == "GET":
            return self._search(path, request.url.query.decode())
        if request.method == "DELETE":
            resource_type, _, rid = path.partition("/")
            self.resources.get(resource_type, {}).pop(rid, None)
            return httpx.Response(204)
        if request.method == "POST" and path == "" and isinstance(body, dict):
            if body.get("type") not in self.bundles:
                return outcome(400, f"{body.get('type')} Bundles are not supported")
            if body.get("type") == "batch":
                return self._batch(body)
            if body.get("type") == "transaction":
                return self._transaction(body)
        if request.method in ("POST", "PUT") and path and isinstance(body, dict):
            return self._single(request, path, body)
        return outcome(400, f"not understood: {request.method} {path}")

    def _single(self, request: httpx.Request, path: str, body: Resource) -> httpx.Response:
        """One create or update, as the REST API's own interactions."""
        entry: Resource = {"resource": body, "request": {"method": request.method, "url": path}}
        for header, name in (("If-None-Exist", "ifNoneExist"), ("If-Match", "ifMatch")):
            if header in request.headers:
                entry["request"][name] = request.headers[header]
        saved = copy.deepcopy(self.resources)
        try:
            (answer,) = self._apply([entry])
        except TransactionFailed as failed:
            self.resources = saved
            return outcome(failed.status, str(failed))
        status = int(answer["response"]["status"][:3])
        headers = {"Location": answer["response"]["location"]}
        if request.headers.get("Prefer") == "return=minimal":
            return httpx.Response(status, headers=headers)
        resource_type, rid = path.split("/")[0], answer["response"]["location"].split("/")[1]
        return httpx.Response(status, headers=headers, json=self.resources[resource_type][rid])

    def _search(self, resource_type: str, query: str) -> httpx.Response:
        params = parse_qs(query)
        tokens = params.get("identifier")
        part_of = params.get("part-of")
        endpoint = params.get("endpoint")
        if endpoint:  # an ImagingStudy search by its Endpoint (no date prefixes here)
            found = [
                r
                for r in self.all(resource_type)
                if any(e.get("reference") == endpoint[0] for e in r.get("endpoint") or [])
            ]
            return httpx.Response(200, json=_searchset(found))
        if part_of:
            found = [
                r
                for r in self.all(resource_type)
                if any(p.get("reference") == part_of[0] for p in r.get("partOf") or [])
            ]
            return httpx.Response(200, json=_searchset(found))
        if not tokens:
            return outcome(400, "only identifier, endpoint and part-of searches are supported")
        found = self.search(resource_type, tokens[0])
        return httpx.Response(200, json=_searchset(found))

    def _batch(self, body: Resource) -> httpx.Response:
        entries = []
        for entry in body.get("entry", []):
            if entry["request"]["method"] != "GET":  # a write, on its own
                saved = copy.deepcopy(self.resources)
                try:
                    entries += self._apply([entry])
                except TransactionFailed as failed:
                    self.resources = saved
                    failure = outcome(failed.status, str(failed)).json()
                    entries.append({"response": {"status": str(failed.status), "outcome": failure}})
                continue
            url = entry["request"]["url"]
            resource_type, _, query = url.partition("?")
            answer = self._search(resource_type, query)
            entries.append({"resource": answer.json(), "response": {"status": "200 OK"}})
        return httpx.Response(
            200, json={"resourceType": "Bundle", "type": "batch-response", "entry": entries}
        )

    def _transaction(self, body: Resource) -> httpx.Response:
        self.before_transaction(body)
        status = self.status_for(body)
        if status:
            return outcome(status, "this bundle is refused")
        saved = copy.deepcopy(self.resources)
        try:
            responses = self._apply(body.get("entry", []))
        except TransactionFailed as failed:
            self.resources = saved  # all or nothing
            return outcome(failed.status, str(failed))
        return httpx.Response(
            200,
            json={"resourceType": "Bundle", "type": "transaction-response", "entry": responses},
        )

    def _apply(self, entries: list[Resource]) -> list[Resource]:
        # First the ids every conditional create stands for, so references can be resolved.
        resolved: dict[str, str] = {}
        plans: list[tuple[str, str | None, bool]] = []  # (type, id or None, create)
        for entry in entries:
            request = entry["request"]
            method, url = request["method"], request["url"]
            if method == "POST":
                resource_type = url
                condition = request.get("ifNoneExist", "") if self.conditional_create else ""
                matches = (
                    self.search(resource_type, parse_qs(condition)["identifier"][0])
                    if condition
                    else []
                )
                if len(matches) > 1:
                    raise TransactionFailed(412, f"{len(matches)} matches for {condition}")
                rid = matches[0]["id"] if matches else str(next(self._ids))
                plans.append((resource_type, rid, not matches))
            else:
                resource_type, _, rid = url.partition("/")
                plans.append((resource_type, rid, False))
            if entry.get("fullUrl"):
                resolved[entry["fullUrl"]] = f"{resource_type}/{plans[-1][1]}"
        responses = []
        for entry, (resource_type, rid, create) in zip(entries, plans, strict=True):
            assert rid is not None
            request = entry["request"]
            stored = self.resources.setdefault(resource_type, {})
            if request["method"] == "DELETE":
                stored.pop(rid, None)
                responses.append({"response": {"status": "204 No Content"}})
                continue
            if request["method"] == "POST" and not create:
                responses.append(_response("200 OK", resource_type, stored[rid]))
                continue
            current = stored.get(rid)
            if request["method"] == "PUT" and request.get("ifMatch") and self.if_match:
                version = current["meta"]["versionId"] if current else None
                if request["ifMatch"] != f'W/"{version}"':
                    raise TransactionFailed(412, f"{resource_type}/{rid} is not version {version}")
            resource = _resolve(copy.deepcopy(entry["resource"]), resolved)
            refusal = self.reject(resource)
            if refusal:
                raise TransactionFailed(400, refusal)
            version = str(int(current["meta"]["versionId"]) + 1) if current else "1"
            resource.update(id=rid, meta={"versionId": version})
            stored[rid] = resource
            status = "201 Created" if current is None else "200 OK"
            responses.append(_response(status, resource_type, resource))
        return responses


def _response(status: str, resource_type: str, resource: Resource) -> Resource:
    location = f"{resource_type}/{resource['id']}/_history/{resource['meta']['versionId']}"
    return {"response": {"status": status, "location": location}}


def _resolve(value: Any, resolved: dict[str, str]) -> Any:
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str) and value["reference"] in resolved:
            return {**value, "reference": resolved[value["reference"]]}
        return {k: _resolve(v, resolved) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, resolved) for v in value]
    return value


def _searchset(resources: list[Resource]) -> Resource:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
