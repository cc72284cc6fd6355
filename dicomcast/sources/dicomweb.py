"""Any DICOMweb archive as a source, by QIDO-RS and WADO-RS alone (dcm4chee-arc, Google
Cloud Healthcare, Kheops, HealthImaging's DICOMweb, a PACS's DICOMweb gateway, Orthanc's
plugin): none of them offers a change feed dicomcast could read.

Its "feed" is a listing, as for a PACS over C-FIND (`windows.py`): each poll searches the
studies of the last `lookback_days` (and, while a sweep runs, one older page of dates)
with their instance counts and who their patient is; a study whose count or patient
changed is read with WADO-RS metadata. A search is paged by `offset`; a range with
`max_matches` matches or more is asked again in halves (set it to a server's own cap:
HealthImaging's DICOMweb stops at 10,000 and looks complete). A study is gone only when
its metadata is not found and a search on its UID agrees.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from dicomcast.auth.cloud import PUBSUB_SCOPE, google_default
from dicomcast.config import SourceSettings
from dicomcast.errors import MappingError, SourceUnavailable, StoredValueError
from dicomcast.http import make_client
from dicomcast.model import DateSpan, DirtyMark, StudyLocation
from dicomcast.sources.base import ArchivePage, FetchedStudy, Notified, SourceContext
from dicomcast.sources.pubsub import Subscription, skipped
from dicomcast.sources.rest import NotFound, RestSource
from dicomcast.sources.windows import (
    INSTANCES,
    PATIENT,
    STUDY_DATE,
    DateWindows,
    ListedFeed,
    Listing,
    key_parts,
    listed,
    no_feed,
    split,
    study_key,
)
from dicomcast.studyview import STUDY_UID, build_study_views, is_uid, text_value

log = logging.getLogger(__name__)
DICOM_JSON = {"Accept": "application/dicom+json"}
PAGE = 200  # results asked for per QIDO page


class TooMany(Exception):
    """A date range holds more studies than one listing may page through."""


class DicomwebSource(ListedFeed, RestSource):
    """A `StudyListing` (QIDO-RS by StudyDate windows, its feed) and an `ArchiveListing`."""

    kind = "dicomweb"
    following = "lists a DICOMweb archive"

    def __init__(
        self,
        settings: SourceSettings,
        *,
        clock: Callable[[], float] = time.time,
        today: Callable[[], dt.date] = dt.date.today,
        **options: Any,
    ) -> None:
        super().__init__(settings, **options)
        self.windows = DateWindows(
            settings.lookback_days, settings.sweep_interval, clock=clock, today=today
        )
        self.max_matches = settings.max_matches
        self.identities: dict[str, str] = {}  # key -> patient digest, as last listed
        self._location = StudyLocation(settings.published_url, settings.name)

    # --- the feed: a listing (`ListedFeed`: none to read)

    def list_studies(self) -> dict[str, int]:
        ranges = self.windows.ranges()
        found = Listing()
        for first, last in ranges:
            found.update(listed(self._listing(first, last)))
        self.windows.listed(ranges)
        self.identities = found.identities
        return found.counts

    def archive(self, span: DateSpan, after: str | None, limit: int) -> ArchivePage:
        """30 days of StudyDate a page, newest first (`limit` is the server's to keep)."""
        page = self.windows.archive_page(span, after)
        if page is None:
            return ArchivePage([], None)
        (start, end), following = page
        return ArchivePage(list(listed(self._listing(start, end)).counts), following)

    def _listing(self, first: dt.date, last: dt.date) -> list[dict[str, Any]]:
        """Every study of a date range, page by page; in halves when it holds too many."""
        try:
            return self._search(StudyDate=f"{first:%Y%m%d}-{last:%Y%m%d}")
        except TooMany:
            if first >= last:
                raise SourceUnavailable(
                    f"DICOMweb search of {first:%Y-%m-%d} holds more studies than "
                    f"{self.max_matches} (raise DICOMCAST_SOURCE_MAX_MATCHES)"
                ) from None
        (a, b), (c, d) = split(first, last)
        return self._listing(a, b) + self._listing(c, d)

    def _search(self, **query: Any) -> list[dict[str, Any]]:
        """QIDO-RS `studies` with the count and the patient, paged by offset until a page
        comes back empty (a server may answer fewer than asked per page). At
        `max_matches` it raises `TooMany`: a server that stops at its own cap
        (HealthImaging: 10,000) looks complete, so the setting names that cap."""
        fields = ",".join((STUDY_DATE, INSTANCES, *PATIENT))
        found: list[dict[str, Any]] = []
        while True:
            page = self.rest.get(
                "studies",
                headers=DICOM_JSON,
                includefield=fields,
                offset=len(found),
                limit=PAGE,
                **query,
            )
            if page is not None and not isinstance(page, list):
                raise SourceUnavailable("DICOMweb search answer is not a JSON array")
            items = [a for a in page or [] if isinstance(a, dict)]
            found += items
            if len(found) >= self.max_matches:
                raise TooMany
            if not items:
                return found

    # --- one study

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        try:
            date, uid = key_parts(key)
        except ValueError:
            raise MappingError("not a DICOMweb study key", detail=f"key {key[:200]!r}") from None
        try:
            metadata = self.rest.get(
                f"studies/{quote(uid, safe='')}/metadata",
                object_hook=self.metadata_filter(),
                headers=DICOM_JSON,
            )
        except NotFound:
            metadata = None
        if metadata is not None and not isinstance(metadata, list):
            raise SourceUnavailable(f"DICOMweb metadata of {uid} is not a JSON array")
        views, orphans = build_study_views([m for m in metadata or [] if isinstance(m, dict)])
        view = next((v for v in views if v.uid == uid), None)
        listed_date = text_value(view.data, STUDY_DATE) if view else None
        if view is None or (listed_date or None) != date:
            return self._absent(key, uid, date)
        return FetchedStudy(key, view, True, uid, orphans)

    def _absent(self, key: str, uid: str, date: str | None) -> FetchedStudy:
        """No study of this key in the metadata: gone (or moved to another StudyDate) only
        when a search on its UID agrees."""
        if any(k == key for k in self.lookup_study(uid)):
            raise SourceUnavailable(
                "the DICOMweb server lists a study its metadata read did not return; "
                "reading it again later"
            )
        return FetchedStudy.absent(key, uid)

    def lookup_study(self, study_uid: str) -> list[str]:
        if not is_uid(study_uid):
            return []
        return [
            study_key(text_value(a, STUDY_DATE), study_uid)
            for a in self._search(StudyInstanceUID=study_uid)
            if is_study(a, study_uid)
        ]

    def location(self, key: str) -> StudyLocation:
        return self._location

    def default_location(self) -> StudyLocation:
        return self._location

    def check(self, timeout: float = 5.0) -> str:
        """A search for one study: the server answers QIDO-RS."""
        self.rest.get("studies", headers=DICOM_JSON, limit=1)
        return f"DICOMweb {self.settings.published_url} answers QIDO-RS"


def is_study(answer: dict[str, Any], study_uid: str) -> bool:
    """A search answer is the study asked for (a server may ignore the UID filter)."""
    return text_value(answer, STUDY_UID) == study_uid


class NotifiedDicomwebSource(DicomwebSource):
    """A DICOMweb archive that also tells of changes (`Notifications`): a Google DICOM
    store's Pub/Sub subscription. Its listing runs at each reconcile scan instead of each
    poll; the notifications name studies by UID, looked up by QIDO for their keys."""

    def __init__(self, settings: SourceSettings, *, pubsub: httpx.Client, **options: Any) -> None:
        super().__init__(settings, **options)
        self.pubsub = pubsub
        self.subscription = Subscription(pubsub, str(settings.pubsub_subscription), self.rest.retry)

    def notifications(self, limit: int) -> Notified:
        messages = self.subscription.pull(limit)
        when: dict[str, float | None] = {}
        for m in messages:  # one per instance: a study once, at its latest change
            if m.study_uid:
                at = m.published_at
                when[m.study_uid] = max(filter(None, (when.get(m.study_uid), at)), default=None)
        marks: list[DirtyMark] = []
        for uid, at in when.items():  # looked up as a listing would show it: no re-sync then
            found = listed(a for a in self._search(StudyInstanceUID=uid) if is_study(a, uid))
            marks += [
                DirtyMark(key, at, uid, count=n, identity=found.identities.get(key))
                for key, n in found.counts.items()
            ]
        return Notified(marks, skipped(messages), [m.ack_id for m in messages])

    def acknowledge(self, notified: Notified) -> None:
        self.subscription.acknowledge(notified.receipt)

    def close(self) -> None:
        super().close()
        self.pubsub.close()


def from_settings(settings: SourceSettings, context: SourceContext) -> DicomwebSource:
    """A DICOMweb source, as the registry builds it; told by Pub/Sub where the settings
    name a subscription (logged in with ADC when `auth` is google, else not at all: the
    emulator)."""
    clocks: dict[str, Any] = {"clock": context.clock, "today": context.today}
    if not settings.pubsub_subscription:
        return DicomwebSource.from_context(settings, context, **clocks)
    auth = google_default(context.verify, PUBSUB_SCOPE) if settings.auth == "google" else None
    pubsub = make_client(
        settings.pubsub_url,
        auth=auth,
        verify=settings.tls_ca_bundle or context.verify,
        timeout=context.timeout,
        transport=context.transport,
    )
    return NotifiedDicomwebSource.from_context(settings, context, pubsub=pubsub, **clocks)


def check_cursor(settings: SourceSettings, value: str) -> None:
    """No change feed to position: its first poll reads the last `lookback_days`."""
    raise StoredValueError(no_feed(settings.name, DicomwebSource.following))
