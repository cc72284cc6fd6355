"""AWS HealthImaging as a source: a data store's image sets, followed by their `updatedAt`.

HealthImaging has no change feed and no study resource. Its image sets (one import job
makes one or more, a study can be split over several) are searched by `updatedAt`, oldest
first; each names its study (`DICOMTags.DICOMStudyInstanceUID`), which is marked dirty and
then read whole: every image set of the StudyInstanceUID, each by `GetImageSetMetadata`.
A study key is its StudyInstanceUID.

The cursor is the newest `updatedAt` read and the image sets already read near it. Each
read starts `OVERLAP` seconds behind the cursor, so an image set whose update became
searchable late is still found, and skips what it read already (ties included). An update
(`UpdateImageSetMetadata`) makes a new version with a new `updatedAt`: the study is read
again. A deleted image set leaves search, so deletes are found by the reconcile scan,
which lists the data store's studies.

Primary image sets (`isPrimary`, where the data store has it) are what the study is: when a
study has primary image sets, non-primary ones are left out (their instances are copies
or conflicting versions waiting for an operator), and a warning says how many.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import zlib
from typing import Any

from dicomcast.config import SourceSettings
from dicomcast.errors import MappingError, SourceUnavailable, StoredValueError
from dicomcast.http import Observer
from dicomcast.model import DateSpan, DirtyMark, Skipped, StudyLocation
from dicomcast.sources.base import (
    UNCOUNTED,
    ArchivePage,
    FeedPage,
    FetchedStudy,
    ReadPlan,
    SourceContext,
)
from dicomcast.sources.healthimaging import metadata
from dicomcast.sources.healthimaging.calls import Calls, make_client, too_large
from dicomcast.studyview import build_study_views, dataset_filter, is_uid, text_value

OVERLAP = 30.0  # seconds re-read behind the cursor: image sets that became searchable late
SEEN_MAX = 5_000  # image sets remembered near the cursor (beyond it a re-read is a no-op)
AHEAD = 60.0  # the window ends this far past our clock (clocks differ)
SOP_INSTANCE_UID = "00080018"


class HealthImagingSource:
    """A `ChangeFeed` (image sets by `updatedAt`), a `StudyListing` for the reconcile scan
    (its feed does not log deletions) and an `ArchiveListing`."""

    kind = "aws-healthimaging"

    def __init__(
        self,
        config: SourceSettings,
        *,
        client: Any = None,
        verify: bool | str = True,
        max_bytes: int = 256 * 2**20,
        plan: ReadPlan | None = None,
        observe: Observer | None = None,
    ):
        self.name = config.name
        self.max_bytes = max_bytes  # a study's metadata, decompressed: MAX_STUDY_BYTES
        self.config = config
        self.calls = Calls(client or make_client(config, verify), config)
        self.calls.observe = observe
        self.plan = plan or ReadPlan()
        self._location = StudyLocation(config.published_url, config.name)
        self._listed = False

    # --- the feed

    def read_changes(self, cursor: str | None, limit: int) -> FeedPage:
        at, seen = _position(cursor)
        window = _between("updatedAt", max(0.0, at - OVERLAP), time.time() + AHEAD)
        criteria = {"filters": [window], "sort": {"sortField": "updatedAt", "sortOrder": "ASC"}}
        marks: list[DirtyMark] = []
        skipped: list[Skipped] = []
        read, token, newest = 0, None, at
        while True:
            answer = self.calls.search(criteria, token)
            token = answer.get("nextToken")
            for summary in answer.get("imageSetsMetadataSummaries") or []:
                read += 1
                entry, updated = _entry(summary)
                if entry in seen:
                    continue
                seen[entry] = updated
                newest = max(newest, updated)
                uid = str((summary.get("DICOMTags") or {}).get("DICOMStudyInstanceUID") or "")
                if is_uid(uid):
                    marks.append(DirtyMark(uid, updated, uid))
                else:
                    skipped.append(Skipped(entry, "image set without a valid StudyInstanceUID"))
            if not token or len(marks) >= limit:
                break
        near = sorted(((u, e) for e, u in seen.items() if u >= newest - OVERLAP), reverse=True)
        position = {"at": newest, "seen": {e: u for u, e in near[:SEEN_MAX]}}
        return FeedPage(
            marks,
            json.dumps(position, separators=(",", ":")),
            None,
            done=not token,
            changes_read=read,
            skipped=skipped,
        )

    def head(self) -> str:
        return json.dumps({"at": time.time(), "seen": {}})

    def next_position(self, cursor: str | None) -> str:
        at, seen = _position(cursor)
        return json.dumps({"at": at + 0.001, "seen": seen})

    # --- one study

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        if not is_uid(key):
            raise MappingError("not a StudyInstanceUID", detail=f"study key {key[:200]!r}")
        summaries = self._image_sets(key)
        primary = [s for s in summaries if s.get("isPrimary") is True]
        chosen = primary or summaries
        warnings = []
        if primary and len(primary) < len(summaries):
            warnings.append(
                f"{len(summaries) - len(primary)} non-primary image sets of the study left out"
            )
        instances: dict[str, dict[str, Any]] = {}
        left = self.max_bytes
        for summary in sorted(chosen, key=lambda s: _entry(s)[1]):  # the newest wins
            blob = self.calls.metadata(str(summary["imageSetId"]), left)
            if blob is None:
                continue  # deleted since the search
            raw = _inflated(blob, left)
            left -= len(raw)
            for instance in metadata.instances(_decoded(raw)):
                instances[text_value(instance, SOP_INSTANCE_UID) or str(len(instances))] = instance
        if not instances:
            if summaries and self._image_sets(key):  # deleted since the search? ask again
                raise SourceUnavailable(
                    "HealthImaging lists image sets of the study but returned no metadata "
                    "for them; reading it again later"
                )
            return FetchedStudy.absent(key, key)
        found = list(instances.values())
        if self.plan.tags is not None:
            found = dataset_filter(self.plan.tags, self.plan.content_of).tree(found)
        views, orphans = build_study_views(found)
        view = next((v for v in views if v.uid == key), None)
        if view is None:
            raise MappingError(
                "the study's image sets hold no instance of its StudyInstanceUID",
                detail=f"StudyInstanceUID {key}",
            )
        return FetchedStudy(key, view, True, key, warnings + orphans)

    def _image_sets(self, study_uid: str) -> list[dict[str, Any]]:
        criteria = {
            "filters": [{"operator": "EQUAL", "values": [{"DICOMStudyInstanceUID": study_uid}]}]
        }
        found: list[dict[str, Any]] = []
        token = None
        while True:
            answer = self.calls.search(criteria, token)
            found += answer.get("imageSetsMetadataSummaries") or []
            token = answer.get("nextToken")
            if not token:
                return found

    def lookup_study(self, study_uid: str) -> list[str]:
        return [study_uid] if is_uid(study_uid) and self._image_sets(study_uid) else []

    # --- listings

    def list_studies(self) -> dict[str, int]:
        """Every study of the data store, `UNCOUNTED`: HealthImaging keeps no instance
        count (the scan looks for studies that vanished or were never seen)."""
        found: dict[str, int] = {}
        after: str | None = None
        while True:
            page = self.archive(DateSpan(), after, 50)
            found.update(dict.fromkeys(page.keys, UNCOUNTED))
            after = page.after
            if after is None:
                break
        self._listed = True
        return found

    def archive(self, span: DateSpan, after: str | None, limit: int) -> ArchivePage:
        window = _between("createdAt", 0.0, time.time() + AHEAD)
        answer = self.calls.search({"filters": [window]}, after)
        keys: list[str] = []
        for summary in answer.get("imageSetsMetadataSummaries") or []:
            tags = summary.get("DICOMTags") or {}
            uid = str(tags.get("DICOMStudyInstanceUID") or "")
            if is_uid(uid) and uid not in keys and span.holds(tags.get("DICOMStudyDate")):
                keys.append(uid)
        return ArchivePage(keys, answer.get("nextToken") or None)

    def covers(self, key: str) -> bool:
        return self._listed

    def location(self, key: str) -> StudyLocation:
        return self._location

    def default_location(self) -> StudyLocation:
        return self._location

    def check(self, timeout: float = 5.0) -> str:
        """GetDatastore and one search: the data store exists, is active, and we may read
        it; a missing permission is named (`medical-imaging:SearchImageSets`)."""
        properties = self.calls.datastore_properties()
        status = properties.get("datastoreStatus", "?")
        if status != "ACTIVE":
            raise SourceUnavailable(f"HealthImaging data store is {status}", outage=True)
        self.calls.search({"filters": [_between("createdAt", 0.0, time.time() + AHEAD)]}, None)
        return f"AWS HealthImaging data store {properties.get('datastoreName', '?')} ({status})"

    def close(self) -> None:
        self.calls.client.close()


def parse_cursor(cursor: str | None) -> tuple[float, dict[str, float]]:
    """(newest `updatedAt` read, image sets read near it) from a cursor: ours, or an ISO
    time an operator set (`cursor set 2026-11-01T00:00:00Z`: what changed since then).
    ValueError for anything else."""
    if not cursor:
        return 0.0, {}
    if not cursor.startswith("{"):
        moment = dt.datetime.fromisoformat(cursor.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError("a time needs its zone (Z or +hh:mm)")
        return moment.timestamp(), {}
    try:
        data = json.loads(cursor)
        return float(data["at"]), {str(k): float(v) for k, v in dict(data["seen"]).items()}
    except (KeyError, TypeError) as exc:
        raise ValueError(str(exc)) from None


def _position(cursor: str | None) -> tuple[float, dict[str, float]]:
    try:
        return parse_cursor(cursor)
    except ValueError:
        raise StoredValueError(
            f"the stored cursor {str(cursor)[:60]!r} is neither a HealthImaging position nor "
            "an ISO time: set one with `dicomcast cursor set`"
        ) from None


def _entry(summary: dict[str, Any]) -> tuple[str, float]:
    """(image set id and version, its updatedAt as epoch seconds)."""
    updated = summary.get("updatedAt") or summary.get("createdAt")
    at = updated.timestamp() if isinstance(updated, dt.datetime) else 0.0
    return f"{summary.get('imageSetId')}/{summary.get('version', '')}", at


def _between(field: str, start: float, end: float) -> dict[str, Any]:
    values = [dt.datetime.fromtimestamp(t, dt.UTC) for t in (start, end)]
    return {"operator": "BETWEEN", "values": [{field: v} for v in values]}


def _inflated(blob: bytes, limit: int) -> bytes:
    """The metadata JSON, at most `limit` bytes of it: 255 KiB of gzip can inflate to
    256 MiB, so the bound is on what comes out, not on what was sent."""
    raw = blob
    if blob[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            raw = inflater.decompress(blob, limit + 1)
        except zlib.error:
            raise SourceUnavailable(
                "HealthImaging metadata is not valid gzip", outage=True
            ) from None
    if len(raw) > limit:
        raise too_large(limit)
    return raw


def _decoded(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise SourceUnavailable("HealthImaging metadata is not JSON", outage=True) from None
    if not isinstance(data, dict):
        raise SourceUnavailable("HealthImaging metadata is not a JSON object", outage=True)
    return data


def from_settings(settings: SourceSettings, context: SourceContext) -> HealthImagingSource:
    """A HealthImaging source, as the registry builds it (boto3 makes its own client)."""
    return HealthImagingSource(
        settings,
        verify=context.verify,
        max_bytes=context.max_bytes,
        plan=context.plan,
        observe=context.observe,
    )


def check_cursor(settings: SourceSettings, value: str) -> None:
    """An ISO time with its zone, or a position this source wrote."""
    try:
        parse_cursor(value)
    except ValueError:
        raise StoredValueError(
            f"{value[:40]!r} is not a HealthImaging position: give an ISO time with its zone"
        ) from None
