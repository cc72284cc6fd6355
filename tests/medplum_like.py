"""A loopback FHIR proxy in front of a real FHIR server (sekmet) that answers the way
Medplum 4.5.2's default project was measured to (shared/design/servers.md):

- `Prefer: return=minimal` on a Bundle: `200` with an empty body, whatever happened inside;
- not atomic: a refused entry (a Patient a project rule refuses, here by family name) is
  dropped and the rest stored, its references pointing at an id that never existed;
- a stale `If-Match` inside a transaction: `412` for that entry inside a `200`;
- `versioning: versioned` in its CapabilityStatement, while `If-Match` is enforced;
- with `contradict`, a conditional create of a Patient that exists is answered "exists at
  A" while the other entries are stored pointing at a B that never existed.

Every request's method, path and entries are kept in `seen` for the tests to read.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.loopback import Answer, Loopback

FORWARDED = ("accept", "content-type", "if-match", "if-none-exist")


def _outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "details": {"text": text}}],
    }


class MedplumLike(Loopback):
    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.fhir_url = f"{self.url}/fhir"
        self.upstream = httpx.Client(base_url=upstream.rstrip("/") + "/", timeout=60)
        self.refuse_family: str | None = None  # Patients of this family name are refused
        self.contradict = False
        self.ehr_edit: dict[str, Any] | None = None  # made before the next ImagingStudy update
        self.seen: list[tuple[str, str, list[dict[str, Any]]]] = []
        self._lock = threading.Lock()

    def close(self) -> None:
        self.upstream.close()

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        path = urlsplit(target).path.removeprefix("/fhir").lstrip("/")
        query = urlsplit(target).query
        sent = json.loads(body) if body else {}
        with self._lock:
            self.seen.append((method, path, list(sent.get("entry") or [])))
        forwarded = {k: v for k, v in headers.items() if k in FORWARDED}
        if method == "GET" and path == "metadata":
            return self._metadata()
        if method == "POST" and path == "" and sent.get("type") == "transaction":
            answers = self._transaction(sent)
            if "return=minimal" in headers.get("prefer", ""):
                return 200, {}, b""  # Medplum: nothing said, whatever happened
            bundle = {"resourceType": "Bundle", "type": "transaction-response", "entry": answers}
            return 200, {"Content-Type": "application/fhir+json"}, json.dumps(bundle).encode()
        response = self.upstream.request(
            method, f"{path}?{query}" if query else path, content=body, headers=forwarded
        )
        return response.status_code, _kept(response), response.content

    def _metadata(self) -> Answer:
        statement = self.upstream.get("metadata").json()
        for rest in statement.get("rest", []):
            for resource in rest.get("resource", []):
                resource["versioning"] = "versioned"  # as Medplum declares: not versioned-update
        return 200, {"Content-Type": "application/fhir+json"}, json.dumps(statement).encode()

    def _transaction(self, bundle: dict[str, Any]) -> list[dict[str, Any]]:
        """Each entry on its own, in order (not atomic), as a transaction-response's entries."""
        answers: list[dict[str, Any]] = []
        ids: dict[str, str] = {}  # fullUrl -> what the entry's references are rewritten to
        for entry in bundle.get("entry") or []:
            resource = _rewrite(entry.get("resource"), ids)
            request = entry.get("request") or {}
            full_url = entry.get("fullUrl")
            kind = (resource or {}).get("resourceType")
            if kind == "Patient" and self._refused(resource):
                if full_url:
                    ids[full_url] = f"Patient/{uuid.uuid4()}"  # never exists
                answers.append(_failed(400, "Patient refused by a project validation rule"))
                continue
            if kind == "Patient" and self.contradict and request.get("ifNoneExist"):
                found = self.upstream.get(f"Patient?{request['ifNoneExist']}").json()
                matches = [e["resource"] for e in found.get("entry") or []]
                if matches:
                    if full_url:
                        ids[full_url] = f"Patient/{uuid.uuid4()}"  # B, which never existed
                    answers.append(_ok("200 OK", f"Patient/{matches[0]['id']}"))  # "at A"
                    continue
            study_update = kind == "ImagingStudy" and request.get("method") == "PUT"
            if study_update and request.get("ifMatch") and self.ehr_edit:
                edit, self.ehr_edit = self.ehr_edit, None
                current = self.upstream.get(request["url"]).json()
                self.upstream.put(request["url"], json={**current, **edit}).raise_for_status()
            answer = self._one(resource, request)
            if full_url and answer["response"].get("location"):
                where = answer["response"]["location"].split("/_history")[0]
                ids[full_url] = "/".join(where.rstrip("/").split("/")[-2:])
            answers.append(answer)
        return answers

    def _refused(self, patient: dict[str, Any]) -> bool:
        families = [n.get("family") for n in patient.get("name") or [] if isinstance(n, dict)]
        return self.refuse_family is not None and self.refuse_family in families

    def _one(self, resource: dict[str, Any] | None, request: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/fhir+json"}
        if request.get("ifNoneExist"):
            headers["If-None-Exist"] = request["ifNoneExist"]
        if request.get("ifMatch"):
            headers["If-Match"] = request["ifMatch"]
        body = json.dumps(resource).encode() if resource is not None else None
        response = self.upstream.request(
            request["method"], request["url"], content=body, headers=headers
        )
        if response.status_code >= 400:
            text = response.text[:200] or response.reason_phrase
            return _failed(response.status_code, text)
        location = response.headers.get("Location") or response.headers.get("Content-Location")
        if not location and response.content:
            stored = response.json()
            location = f"{stored['resourceType']}/{stored['id']}/_history/1"
        return _ok(f"{response.status_code} {response.reason_phrase}", location or "")


def _rewrite(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str) and value["reference"] in ids:
            return {**value, "reference": ids[value["reference"]]}
        return {k: _rewrite(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
    return value


def _ok(status: str, location: str) -> dict[str, Any]:
    if location and "/_history/" not in location:
        location = f"{location}/_history/1"
    return {"response": {"status": status, "location": location}}


def _failed(status: int, text: str) -> dict[str, Any]:
    words = {400: "Bad Request", 409: "Conflict", 412: "Precondition Failed"}.get(status, "")
    return {"response": {"status": f"{status} {words}".strip(), "outcome": _outcome(text)}}


def _kept(response: httpx.Response) -> dict[str, str]:
    return {
        k: v
        for k, v in response.headers.items()
        if k.lower() in ("content-type", "location", "content-location", "etag")
    }
