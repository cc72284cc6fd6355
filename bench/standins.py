"""Stand-ins that answer from memory, to measure the worker itself: an Orthanc and a FHIR
server, in-process (httpx `MockTransport`) or over HTTP (`python -m bench.standins`) when
several worker processes share them.

The archive's studies are clones of one study's DICOMweb metadata as a real Orthanc
answered it (`capture`): every UID is rewritten under a study's own root, so each clone
is a distinct, valid study of the same size and shape. Its change feed logs, per study,
what Orthanc logs: NewStudy, NewSeries, NewInstance for each instance, StableSeries and
StableStudy. The FHIR stand-in accepts every batch and transaction, answers searches with
nothing found, and records when each study's ImagingStudy was first written and how often.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from dicomcast.sandbox.samples import SeriesSpec, StudySpec, instances, to_bytes
from dicomcast.sandbox.servers import OrthancServer

Answer = tuple[int, bytes]
ROOT = "2.25.999000111"  # the captured study's UID root, replaced in every clone
PATIENT = "STANDINPATIENT"
UID_TAGS = ("0020000D", "0020000E", "00080018")


@dataclass(frozen=True)
class Template:
    """One study's metadata with its UIDs rooted at ROOT and its PatientID at PATIENT."""

    text: str
    series: int
    instances: int


def capture(orthanc: OrthancServer, per_study: int = 50, series: int = 2) -> Template:
    """Store one study in a real Orthanc and keep its DICOMweb metadata as the template."""
    spec = StudySpec(
        key="standin",
        patient_id=PATIENT,
        patient_name="Standin^Patient",
        issuer="HOSP-A",
        accession="STANDIN-ACC",
        series=[SeriesSpec("CT", per_study // series, number=n + 1) for n in range(series)],
    )
    orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    with orthanc.client() as http:
        text = http.get(f"/dicom-web/studies/{spec.study_uid}/metadata").text
    metadata = json.loads(text)
    names: dict[str, str] = {spec.study_uid: ROOT}
    series_uids = sorted({m["0020000E"]["Value"][0] for m in metadata})
    for n, uid in enumerate(series_uids):
        names[uid] = f"{ROOT}.{n + 1}"
    for n, item in enumerate(metadata):
        names[item["00080018"]["Value"][0]] = f"{names[item['0020000E']['Value'][0]]}.{n + 1}"
    pattern = re.compile("|".join(re.escape(uid) for uid in sorted(names, key=len, reverse=True)))
    return Template(pattern.sub(lambda m: names[m.group(0)], text), series, len(metadata))


def orthanc_id(text: str) -> str:
    digest = hashlib.sha1(text.encode()).hexdigest()  # an ID, as Orthanc's
    return "-".join(digest[n : n + 8] for n in range(0, 40, 8))


@dataclass
class Study:
    number: int
    uid: str
    id: str
    patient: str
    series: list[str]


class Archive:
    """The Orthanc stand-in. `archived` studies are present from the start and logged in
    the feed when `in_feed`; `live` ones arrive at `live_rate` a second once `go_live`."""

    def __init__(
        self,
        template: Template,
        archived: int,
        *,
        patients: int = 50,
        in_feed: bool = True,
        live: int = 0,
        live_rate: float = 5.0,
        first: int = 0,
    ) -> None:
        self.template = template
        self.patients = patients
        self.studies: dict[str, Study] = {}
        self.by_uid: dict[str, Study] = {}
        self.series_parent: dict[str, str] = {}
        self.changes: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        for n in range(first, first + archived):
            self._add(n, logged=in_feed)
        self.pending = [first + archived + n for n in range(live)]
        self.live_rate = live_rate
        self.live_from: float | None = None
        self.released: dict[str, float] = {}  # live study UID -> when it arrived

    def _add(self, number: int, *, logged: bool) -> Study:
        uid = f"2.25.{10**12 + number}"
        study = Study(
            number,
            uid,
            orthanc_id(uid),
            f"BENCH{number % self.patients}",
            [orthanc_id(f"{uid}.{s + 1}") for s in range(self.template.series)],
        )
        self.studies[study.id] = study
        self.by_uid[uid] = study
        for series in study.series:
            self.series_parent[series] = study.id
        if logged:
            self._log("NewStudy", "Study", study.id)
            for series in study.series:
                self._log("NewSeries", "Series", series)
            for n in range(self.template.instances):
                self._log("NewInstance", "Instance", orthanc_id(f"{uid}/{n}"))
            for series in study.series:
                self._log("StableSeries", "Series", series)
            self._log("StableStudy", "Study", study.id)
        return study

    def _log(self, kind: str, level: str, resource: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.changes.append(
            {
                "Seq": len(self.changes) + 1,
                "ChangeType": kind,
                "ResourceType": level,
                "ID": resource,
                "Date": stamp,
            }
        )

    def go_live(self) -> None:
        self.live_from = time.monotonic()

    def _release(self) -> None:
        if self.live_from is None or not self.pending:
            return
        due = int((time.monotonic() - self.live_from) * self.live_rate) + 1
        while self.pending and len(self.released) < due:
            study = self._add(self.pending.pop(0), logged=True)
            self.released[study.uid] = time.time()

    def metadata(self, study: Study) -> bytes:
        text = self.template.text.replace(ROOT, study.uid)
        return text.replace(PATIENT, study.patient).encode()

    def answer(self, method: str, path: str, query: dict[str, str], body: bytes) -> Answer:
        with self.lock:
            self._release()
            return self._answer(method, path, query, body)

    def _answer(self, method: str, path: str, query: dict[str, str], body: bytes) -> Answer:
        parts = path.strip("/").split("/")
        if method == "GET" and parts == ["changes"]:
            last = len(self.changes)
            if "last" in query:
                return _json({"Changes": [], "Done": True, "Last": last})
            since, limit = int(query.get("since", 0)), int(query.get("limit", 100))
            page = self.changes[since : since + limit]
            done = since + len(page) >= last  # as Orthanc: `Last` is the page's last entry
            return _json({"Changes": page, "Done": done, "Last": page[-1]["Seq"] if page else last})
        if method == "GET" and len(parts) == 2 and parts[0] == "series":
            parent = self.series_parent.get(parts[1])
            return _json({"ID": parts[1], "ParentStudy": parent}) if parent else (404, b"{}")
        if method == "GET" and parts == ["series"]:
            since, limit = int(query.get("since", 0)), int(query.get("limit", 100))
            listed = list(self.series_parent.items())[since : since + limit]
            per = ["i"] * (self.template.instances // self.template.series)
            return _json([{"ID": s, "ParentStudy": p, "Instances": per} for s, p in listed])
        if method == "GET" and len(parts) == 2 and parts[0] == "studies":
            study = self.studies.get(parts[1])
            if study is None:
                return 404, b"{}"
            return _json(
                {
                    "ID": study.id,
                    "IsStable": True,
                    "MainDicomTags": {"StudyInstanceUID": study.uid},
                    "PatientMainDicomTags": {"PatientID": study.patient},
                    "Series": study.series,
                }
            )
        if method == "GET" and parts[:2] == ["dicom-web", "studies"] and parts[-1] == "metadata":
            found = self.by_uid.get(parts[2])
            return (200, self.metadata(found)) if found else (404, b"[]")
        if method == "POST" and parts == ["tools", "find"]:
            ask = json.loads(body)
            since, limit = int(ask.get("Since", 0)), int(ask.get("Limit", 0))
            ids = list(self.studies)[since : since + limit if limit else None]
            return _json(ids)
        if method == "GET" and parts == ["system"]:
            return _json({"Name": "standin", "Version": "1.12.0"})
        return 404, b"{}"


@dataclass
class Fhir:
    """The FHIR stand-in: takes everything, finds nothing, remembers each study's writes."""

    first_write: dict[str, float] = field(default_factory=dict)
    endpoints: list[dict[str, Any]] = field(default_factory=list)  # found by a restart
    writes: dict[str, int] = field(default_factory=dict)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: int = 0

    def _id(self) -> str:
        self._ids += 1
        return str(self._ids)

    def answer(self, method: str, path: str, query: dict[str, str], body: bytes) -> Answer:
        with self.lock:
            self.requests += 1
            parts = path.strip("/").split("/")
            if method == "GET" and parts == ["metadata"]:
                return _json({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"})
            if method == "POST" and parts == [""]:
                return self._bundle(json.loads(body))
            if method == "GET" and parts == ["Endpoint"]:
                found = [{"resource": e} for e in self.endpoints]
                return _json({"resourceType": "Bundle", "type": "searchset", "entry": found})
            if method == "GET":
                return _json({"resourceType": "Bundle", "type": "searchset", "total": 0})
            if method in ("POST", "PUT"):
                ident = parts[1] if len(parts) > 1 else self._id()
                resource = {**json.loads(body), "id": ident, "meta": {"versionId": "1"}}
                return 201, json.dumps(resource).encode()
            return 200, b"{}"

    def _bundle(self, bundle: dict[str, Any]) -> Answer:
        entries = []
        now = time.time()
        for entry in bundle.get("entry", []):
            request = entry.get("request", {})
            if request.get("method") == "GET":
                found = {"resourceType": "Bundle", "type": "searchset", "total": 0}
                entries.append({"resource": found, "response": {"status": "200 OK"}})
                continue
            resource = entry.get("resource") or {}
            kind = resource.get("resourceType") or request.get("url", "").split("/")[0]
            if kind == "ImagingStudy":
                uid = resource["identifier"][0]["value"].removeprefix("urn:oid:")
                self.first_write.setdefault(uid, now)
                self.writes[uid] = self.writes.get(uid, 0) + 1
            ident = self._id()
            if kind == "Endpoint":
                self.endpoints.append({**resource, "id": ident, "meta": {"versionId": "1"}})
            entries.append(
                {"response": {"status": "201 Created", "location": f"{kind}/{ident}/_history/1"}}
            )
        kind = "batch-response" if bundle.get("type") == "batch" else "transaction-response"
        return _json({"resourceType": "Bundle", "type": kind, "entry": entries})

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"first_write": dict(self.first_write), "writes": dict(self.writes)}


def _json(value: Any) -> Answer:
    return 200, json.dumps(value).encode()


Handler = Callable[[str, str, dict[str, str], bytes], Answer]


class Transport(httpx.MockTransport):
    """`handler` as an in-process transport, for a client whose base URL ends in `prefix`;
    `spent` is the CPU time the stand-in took (it is not the worker's)."""

    def __init__(self, handler: Handler, prefix: str) -> None:
        self.spent = 0.0
        self.lock = threading.Lock()

        def answer(request: httpx.Request) -> httpx.Response:
            started = time.thread_time()
            path = request.url.path.removeprefix(prefix)
            query = {k: v[-1] for k, v in parse_qs(request.url.query.decode()).items()}
            if "last" in request.url.query.decode().split("&"):
                query["last"] = ""
            status, content = handler(request.method, path, query, request.read())
            response = httpx.Response(status, content=content, headers=_JSON)
            with self.lock:
                self.spent += time.thread_time() - started
            return response

        super().__init__(answer)


def transport(handler: Handler, prefix: str) -> Transport:
    return Transport(handler, prefix)


_JSON = {"Content-Type": "application/json"}


def serve(archive: Archive, fhir: Fhir, port: int = 0) -> ThreadingHTTPServer:
    """Both stand-ins over HTTP/1.1 (keep-alive): `/orthanc/...`, `/fhir/...`, and
    `/bench/stats` (the FHIR writes) and `/bench/live` (start the live arrivals)."""

    class Handle(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes: without this, Nagle holds the body
            # until the client's delayed ACK (40 ms a request).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _do(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            head, _, rest = url.path.lstrip("/").partition("/")
            if head == "orthanc":
                status, content = archive.answer(self.command, "/" + rest, query, body)
            elif head == "fhir":
                status, content = fhir.answer(self.command, "/" + rest, query, body)
            elif url.path == "/bench/stats":
                released = dict(archive.released)
                status, content = _json({**fhir.stats(), "released": released})
            elif url.path == "/bench/live":
                archive.go_live()
                status, content = 200, b"{}"
            else:
                status, content = 404, b"{}"
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PUT = do_DELETE = _do  # noqa: N815 - http.server's names

    server = ThreadingHTTPServer(("127.0.0.1", port), Handle)
    server.daemon_threads = True
    return server
