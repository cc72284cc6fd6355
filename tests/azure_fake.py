"""A fake Microsoft DICOM service, built from the documented API (shared/design/servers.md),
as an httpx MockTransport: no real one can run here.

What it implements, because dicomcast must cope with it:
- change feed v1 (`offset` an exclusive Sequence, `limit` <= 100 a *window of sequence
  numbers*, so gaps give short or empty pages) and `/changefeed/latest`;
- change feed v2 (`startTime` inclusive, `endTime` exclusive, ordered by Timestamp then
  Sequence, `offset` skipping rows of the window, `limit` <= 200), with several entries
  sharing one Timestamp, written with seven decimals as the service does;
- Sequences with gaps (failed transactions leave holes in the real one);
- actions create / update (bulk update) / delete, earlier entries turning `replaced` or
  `deleted`, `PartitionName` on every entry when partitions are on;
- DICOMweb metadata and QIDO under `/partitions/{name}` (required when partitions are on,
  refused when they are off), `/partitions`;
- bearer tokens from an Entra ID-like token endpoint; `expire_tokens()` makes every token
  in use answer 401, as an expired one does;
- scripted faults: 429 with Retry-After, 500, 503.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx

from dicomcast.config import DEFAULT_PARTITION

SERVICE = "https://fake.dicom.azurehealthcareapis.com"
LOGIN = "https://login.microsoftonline.com"
TENANT = "tenant-1"
CLIENT_ID = "dicomcast-test"
CLIENT_SECRET = "s3cret-value"  # a test fixture, never a real secret
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
STUDY_DATE = "00080020"


@dataclass
class Entry:
    sequence: int
    partition: str
    study: str
    series: str
    sop: str
    action: str
    timestamp: dt.datetime
    state: str = "current"

    def json(self, partitioned: bool) -> dict[str, Any]:
        body = {
            "Sequence": self.sequence,
            "StudyInstanceUid": self.study,
            "SeriesInstanceUid": self.series,
            "SopInstanceUid": self.sop,
            "Action": self.action,
            "Timestamp": stamp(self.timestamp),
            "State": self.state,
        }
        if partitioned:
            body["PartitionName"] = self.partition
        return body


def stamp(when: dt.datetime) -> str:
    """The service's format: UTC with seven decimals (the last one always 0 here)."""
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _parse_time(text: str) -> dt.datetime:
    text = text.strip().replace("Z", "+00:00")
    text = re.sub(r"\.(\d{6})\d+", r".\1", text)
    return dt.datetime.fromisoformat(text)


def _uid(instance: dict[str, Any], tag: str) -> str:
    return str(instance[tag]["Value"][0])


@dataclass
class FakeDicomService:
    partitioned: bool = False
    gaps: bool = True
    require_auth: bool = True
    entries: list[Entry] = field(default_factory=list)
    # (partition, study, series, sop) -> DICOM JSON
    instances: dict[tuple[str, str, str, str], dict[str, Any]] = field(default_factory=dict)
    faults: deque[tuple[int, dict[str, str]]] = field(default_factory=deque)
    requests: list[httpx.Request] = field(default_factory=list)
    token_requests: int = 0
    clock: dt.datetime = field(default_factory=lambda: dt.datetime(2026, 11, 1, tzinfo=dt.UTC))
    _sequence: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _tokens: set[str] = field(default_factory=set)
    _tick: int = 0

    # --- what happens in the archive (each call is one or more feed entries)

    def _next_sequence(self) -> int:
        sequence = next(self._sequence)
        if self.gaps and sequence % 7 == 0:  # a rolled-back transaction leaves a hole
            for _ in range(150 if sequence % 21 == 0 else 3):
                sequence = next(self._sequence)
        return sequence

    def _now(self) -> dt.datetime:
        # Three entries share each instant, so pages split instants (v2 must resume inside).
        self._tick += 1
        if self._tick % 3 == 0:
            self.clock += dt.timedelta(milliseconds=1)
        return self.clock

    def _log(self, partition: str, key: tuple[str, str, str], action: str) -> None:
        for entry in self.entries:
            if (entry.partition, entry.study, entry.series, entry.sop) == (partition, *key):
                entry.state = "deleted" if action == "delete" else "replaced"
        state = "deleted" if action == "delete" else "current"
        self.entries.append(
            Entry(self._next_sequence(), partition, *key, action, self._now(), state)
        )

    def store(self, instances: list[dict[str, Any]], partition: str = DEFAULT_PARTITION) -> None:
        for instance in instances:
            key = (_uid(instance, STUDY_UID), _uid(instance, SERIES_UID), _uid(instance, SOP_UID))
            self.instances[(partition, *key)] = json.loads(json.dumps(instance))
            self._log(partition, key, "create")

    def update_study(
        self, study: str, changes: dict[str, Any], partition: str = DEFAULT_PARTITION
    ) -> None:
        """Bulk update: new metadata for every instance of the study, one entry each."""
        for key, instance in list(self.instances.items()):
            if key[0] == partition and key[1] == study:
                instance.update(json.loads(json.dumps(changes)))
                self._log(partition, key[1:], "update")

    def delete(
        self,
        study: str,
        series: str | None = None,
        sop: str | None = None,
        partition: str = DEFAULT_PARTITION,
    ) -> int:
        gone = [
            key
            for key in self.instances
            if key[0] == partition
            and key[1] == study
            and (series is None or key[2] == series)
            and (sop is None or key[3] == sop)
        ]
        for key in gone:
            del self.instances[key]
            self._log(partition, key[1:], "delete")
        return len(gone)

    def expire_tokens(self) -> None:
        self._tokens.clear()

    def fail_next(self, status: int, times: int = 1, retry_after: float | None = None) -> None:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        self.faults.extend([(status, headers)] * times)

    @property
    def latest_sequence(self) -> int:
        return self.entries[-1].sequence if self.entries else 0

    # --- HTTP

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == "login.microsoftonline.com":
            return self._token(request)
        self.requests.append(request)
        if self.require_auth:
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer ") or header[7:] not in self._tokens:
                return _error(401, "The access token has expired or is not valid.")
        if self.faults:
            status, headers = self.faults.popleft()
            return _error(status, "injected fault", headers)
        query = {k: v[-1] for k, v in parse_qs(request.url.query.decode()).items()}
        match = re.fullmatch(r"/(v1|v2)(/partitions/([^/]+))?(/.*)", request.url.path)
        if not match:
            return _error(404, "no such route")
        version, partition, rest = match.group(1), match.group(3), match.group(4)
        if rest == "/changefeed":
            if version == "v1":
                return self._feed_v1(query)
            return self._feed_v2(query)
        if rest == "/changefeed/latest":
            if not self.entries:
                return httpx.Response(200, json={})
            return httpx.Response(200, json=self.entries[-1].json(self.partitioned))
        if rest == "/partitions" and partition is None:
            names = sorted({key[0] for key in self.instances} | {DEFAULT_PARTITION})
            return httpx.Response(200, json=[{"partitionName": n} for n in names])
        if self.partitioned and partition is None:
            return _error(400, "A partition name is required: data partitioning is enabled.")
        if not self.partitioned and partition is not None:
            return _error(400, "Data partitioning is not enabled.")
        partition = partition or DEFAULT_PARTITION
        study = re.fullmatch(r"/studies/([0-9.]+)/metadata", rest)
        if study:
            found = [
                instance
                for key, instance in sorted(self.instances.items())
                if key[0] == partition and key[1] == study.group(1)
            ]
            if not found:
                return _error(404, "The specified study cannot be found.")
            return httpx.Response(
                200, json=found, headers={"Content-Type": "application/dicom+json"}
            )
        if rest == "/studies":
            return self._search_studies(partition, query)
        return _error(404, "no such route")

    def _search_studies(self, partition: str, query: dict[str, str]) -> httpx.Response:
        """QIDO-RS at the study level: by StudyInstanceUID, or by a StudyDate range, paged
        with `offset` and `limit` (<= 200, as the service caps it)."""
        offset, limit = int(query.get("offset", 0)), int(query.get("limit", 100))
        if not 1 <= limit <= 200:
            return _error(400, "limit must be between 1 and 200")
        dates: dict[str, str] = {}
        for (part, uid, *_), instance in sorted(self.instances.items()):
            if part == partition:
                date = instance.get(STUDY_DATE, {}).get("Value", [""])[0]
                dates.setdefault(uid, str(date))
        wanted = query.get("StudyInstanceUID")
        low, _, high = query.get("StudyDate", "-").partition("-")
        hits = [
            uid
            for uid, date in sorted(dates.items())
            if (wanted is None or uid == wanted)
            and (not low or date >= low)
            and (not high or date <= high)
        ][offset : offset + limit]
        if not hits:
            return httpx.Response(204)
        return httpx.Response(200, json=[{STUDY_UID: {"vr": "UI", "Value": [h]}} for h in hits])

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests += 1
        form = {k: v[-1] for k, v in parse_qs(request.content.decode()).items()}
        if request.url.path != f"/{TENANT}/oauth2/v2.0/token":
            return httpx.Response(400, json={"error": "invalid_tenant"})
        if (form.get("client_id"), form.get("client_secret")) != (CLIENT_ID, CLIENT_SECRET):
            return httpx.Response(401, json={"error": "invalid_client"})
        if form.get("scope") != "https://dicom.healthcareapis.azure.com/.default":
            return httpx.Response(400, json={"error": "invalid_scope"})
        token = secrets.token_hex(8)
        self._tokens.add(token)
        return httpx.Response(
            200, json={"token_type": "Bearer", "expires_in": 3599, "access_token": token}
        )

    def _feed_v1(self, query: dict[str, str]) -> httpx.Response:
        offset, limit = int(query.get("offset", 0)), int(query.get("limit", 10))
        if not 1 <= limit <= 100:
            return _error(400, "limit must be between 1 and 100")
        rows = [e for e in self.entries if offset < e.sequence <= offset + limit]
        return httpx.Response(200, json=[e.json(self.partitioned) for e in rows])

    def _feed_v2(self, query: dict[str, str]) -> httpx.Response:
        offset, limit = int(query.get("offset", 0)), int(query.get("limit", 100))
        if not 1 <= limit <= 200:
            return _error(400, "limit must be between 1 and 200")
        start = _parse_time(query["startTime"]) if "startTime" in query else None
        end = _parse_time(query["endTime"]) if "endTime" in query else None
        rows = sorted(
            (
                e
                for e in self.entries
                if (start is None or e.timestamp >= start) and (end is None or e.timestamp < end)
            ),
            key=lambda e: (e.timestamp, e.sequence),
        )
        page = rows[offset : offset + limit]
        return httpx.Response(200, json=[e.json(self.partitioned) for e in page])


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"errors": [{"message": message}]}, headers=headers or {})
