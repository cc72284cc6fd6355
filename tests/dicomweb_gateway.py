"""A DICOMweb-only gateway in front of a real Orthanc, on a loopback port: `/dicom-web/`
requests are relayed, everything else (Orthanc's REST API) is 404, and every path asked
is kept. With `cap`, a study search returns at most `cap` matches in all, whatever the
offset, as HealthImaging's DICOMweb does at 10,000: the rest simply never come."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.loopback import Answer, Loopback

RELAYED = ("content-type",)


class DicomwebOnly(Loopback):
    def __init__(self, upstream: str, cap: int | None = None) -> None:
        super().__init__()
        self.upstream = httpx.Client(base_url=upstream, timeout=60)
        self.cap = cap
        self.paths: list[str] = []
        self.targets: list[str] = []  # with their queries

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def close(self) -> None:
        self.upstream.close()

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        self.paths.append(urlsplit(target).path)
        self.targets.append(target)
        if not target.startswith("/dicom-web/"):
            return 404, {}, b""
        kept = {k: v for k, v in headers.items() if k in ("accept",)}
        response = self.upstream.request(method, target, headers=kept, content=body or None)
        payload = response.content
        if self.cap is not None and urlsplit(target).path == "/dicom-web/studies" and payload:
            query = parse_qs(urlsplit(target).query)
            offset = int(query.get("offset", ["0"])[0])
            room = max(0, self.cap - offset)
            payload = json.dumps(json.loads(payload)[:room]).encode()
        returned = {k: v for k, v in response.headers.items() if k.lower() in RELAYED}
        return response.status_code, returned, payload
