"""Fakes for the unit tests: an in-memory DICOM source with a scripted change feed, a FHIR
server stand-in that answers every request with one status, and a worker built on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from dicomcast.app import build_app
from dicomcast.config import load_settings
from dicomcast.model import DateSpan, DirtyMark, StudyLocation
from dicomcast.sandbox.samples import StudySpec, bulk_studies, instances
from dicomcast.sources.base import ArchivePage, FeedPage, FetchedStudy
from dicomcast.sources.files import dataset_to_json
from dicomcast.studyview import build_study_views
from dicomcast.worker import Worker


def dicom_json(spec: StudySpec) -> list[dict[str, Any]]:
    return [dataset_to_json(ds)[0] for ds in instances(spec)]


def studies(count: int, series: int = 2, prefix: str = "rc") -> dict[str, list[Any]]:
    """`count` studies of `2 * series` instances over two patients, as DICOM JSON by UID."""
    specs = bulk_studies(count, 2 * series, patients=2, prefix=prefix, series=series)
    return {s.study_uid: dicom_json(s) for s in specs}


class ListedFake:
    """Studies held in memory as DICOM JSON, followed by listing them (no change feed)."""

    kind = "fake"
    location_ = StudyLocation("http://fake.test/dicom-web", "default")

    def __init__(self, studies: dict[str, list[Any]], name: str = "default") -> None:
        self.name = name
        self.studies = studies
        self.feed: list[str] = list(studies)

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        if key not in self.studies:
            return FetchedStudy.absent(key)
        views, orphans = build_study_views(self.studies[key])
        view = views[0] if views else None
        return FetchedStudy(key, view, True, view.uid if view else None, orphans)

    def list_studies(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.studies.items()}

    def archive(self, span: DateSpan, after: str | None, limit: int) -> ArchivePage:
        """The studies in key order, `limit` a page (the span is not looked at)."""
        start = int(after or 0)
        keys = sorted(self.studies)[start : start + limit]
        more = start + limit < len(self.studies)
        return ArchivePage(keys, str(start + limit) if more else None)

    def lookup_study(self, study_uid: str) -> list[str]:
        return [k for k in self.studies if k == study_uid]

    def covers(self, key: str) -> bool:
        return True

    def location(self, key: str) -> StudyLocation:
        return self.location_

    def default_location(self) -> StudyLocation:
        return self.location_

    def check(self, timeout: float = 5.0) -> str:
        return "fake source"

    def close(self) -> None:
        pass


class FakeSource(ListedFake):
    """Studies held in memory as DICOM JSON; `feed` lists study keys in change order."""

    def read_changes(self, cursor: str | None, limit: int) -> FeedPage:
        start = int(cursor or 0)
        keys = self.feed[start : start + limit]
        end = start + len(keys)
        return FeedPage(
            [DirtyMark(k) for k in keys],
            str(end),
            str(len(self.feed)),
            end >= len(self.feed),
            changes_read=len(keys),
        )

    def next_position(self, cursor: str | None) -> str:
        return str(int(cursor or 0) + 1)

    def head(self) -> str:
        return str(len(self.feed))


class StatusFhir(httpx.MockTransport):
    """A FHIR server that answers every request with `status` (changeable between calls)."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        self.requests = 0
        super().__init__(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        body = {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "exception", "diagnostics": "boom"}],
        }
        return httpx.Response(self.status, json=body, headers=self.headers)


def fake_worker(
    folder: Path, fhir: httpx.BaseTransport, source: FakeSource, **overrides: Any
) -> Worker:
    """A worker on a fake source and FHIR transport, with its state DB in `folder` and
    short retries and pauses (unit tests wait for them)."""
    values: dict[str, Any] = {
        "source_url": "http://dicom.test",
        "fhir_url": "http://fhir.test/fhir",
        "state_url": f"sqlite:///{folder / 'state.db'}",
        "patient_id_system": "urn:oid:1.2.3",
        "issuer_systems": {"HOSP-A": "urn:oid:1.2.826.0.1.3680043.8.498.1"},
        "http_retries": 1,
        "backoff_base": 0.05,
        "backoff_max": 0.2,
        "max_attempts": 3,
        "http_port": 0,
        **overrides,
    }
    return Worker(build_app(load_settings(None, **values), source=source, fhir_transport=fhir))
