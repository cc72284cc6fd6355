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

import httpx

from dicomcast.auth.cloud import PUBSUB_SCOPE, google_default
from dicomcast.config import SourceSettings
from dicomcast.errors import MappingError, SourceUnavailable, StoredValueError
from dicomcast.http import make_client
from dicomcast.model import DateSpan, DirtyMark, StudyLocation
from dicomcast.sources.base import ArchivePage, FetchedStudy, Notified, SourceContext
from dicomcast.sources.dicomweb_reads import (
    TooMany,
    is_study,
    metadata,
    search,
    search_all,
    study_of,
)
from dicomcast.sources.pubsub import Subscription, skipped
from dicomcast.sources.rest import RestSource
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
from dicomcast.studyview import is_uid, text_value

log = logging.getLogger(__name__)


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
        """QIDO-RS `studies` with the count and the patient, every page; `TooMany` at
        `max_matches` (a server that stops at its own cap, as HealthImaging's does at
        10,000, looks complete: the setting names that cap)."""
        fields = ",".join((STUDY_DATE, INSTANCES, *PATIENT))
        return search_all(self.rest, "", self.max_matches, includefield=fields, **query)

    # --- one study

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        try:
            date, uid = key_parts(key)
        except ValueError:
            raise MappingError("not a DICOMweb study key", detail=f"key {key[:200]!r}") from None
        instances = metadata(self.rest, "", uid, self.metadata_filter())
        view, orphans = study_of(instances or [], uid)
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
        return [study_key(text_value(a, STUDY_DATE), study_uid) for a in self._found(study_uid)]

    def _found(self, study_uid: str) -> list[dict[str, Any]]:
        """The search answers that are this study, with what a listing shows of it."""
        return [a for a in self._search(StudyInstanceUID=study_uid) if is_study(a, study_uid)]

    def location(self, key: str) -> StudyLocation:
        return self._location

    def default_location(self) -> StudyLocation:
        return self._location

    def check(self, timeout: float = 5.0) -> str:
        """A search for one study: the server answers QIDO-RS."""
        search(self.rest, "", limit=1)
        return f"DICOMweb {self.settings.published_url} answers QIDO-RS"


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
            found = listed(self._found(uid))
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
