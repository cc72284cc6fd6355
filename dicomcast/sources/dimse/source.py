"""A PACS over DIMSE as a dicomcast source: its "feed" is a listing, compared each poll.

Query mode: each poll lists the studies whose StudyDate is in the last `lookback_days`
(and, while a sweep runs, one older page of dates) with their instance counts; the feed
marks dirty every study whose count differs from the state DB, and every known study in a
listed date range that no longer answers (it is gone; one that only aged out of the window
is outside every listed range and is left alone). A study's key carries its StudyDate for
that reason. The listing also shows each study's patient (a digest): a correction in place
keeps the count, not the identity. Push mode: a C-STORE listener (`listener.py`) stores
headers in the state DB; a study is read from them once no instance arrived for
`stable_age` seconds. With both, the PACS is the authority: a push hastens a sync and adds
what C-FIND does not answer (SR content), never an instance the PACS does not hold nor a
value it answers; a pushed header that contradicts it (another patient) is dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from pydicom.dataset import Dataset

from dicomcast.config import SourceSettings
from dicomcast.errors import MappingError, OperatorError, SourceUnavailable, StoredValueError
from dicomcast.http import Observer
from dicomcast.model import DateSpan, StudyLocation
from dicomcast.sources.base import UNKNOWN, ArchivePage, FetchedStudy, ReadPlan, SourceContext
from dicomcast.sources.dimse.network import Peer, TooManyMatches
from dicomcast.sources.dimse.query import (
    STUDY_DATE,
    Keys,
    as_json,
    key_parts,
    merged,
    study_key,
)
from dicomcast.sources.windows import DateWindows, ListedFeed, Listing, listed, no_feed, split
from dicomcast.studyview import (
    SERIES_UID,
    SOP_UID,
    build_study_views,
    dataset_filter,
    is_uid,
    text_value,
)

log = logging.getLogger(__name__)
# A PACS whose C-FIND gives no NumberOfStudyRelatedInstances: the count this source found
# when it last read a study stands in for it, for this long; then the study is read again.
RECOUNT_AFTER = 300.0
# What a pushed header must agree on with the PACS's answer to add anything to it:
# PatientID, IssuerOfPatientID, StudyInstanceUID, SeriesInstanceUID, SOPClassUID.
AUTHORITY = ("00100020", "00100021", "0020000D", "0020000E", "00080016")


class HeaderStore(Protocol):
    """Where a C-STORE listener keeps the headers it received (the state DB)."""

    def received(self, source: str, key: str) -> list[dict[str, Any]]: ...

    def last_received(self, source: str, key: str) -> float | None: ...

    def drop_received(self, source: str, sop_uids: list[str]) -> int: ...


class DimseSource(ListedFeed):
    """A `StudyListing` (its C-FIND listing is its feed) and an `ArchiveListing`."""

    kind = "dimse"
    following = "polls a PACS"

    def __init__(
        self,
        settings: SourceSettings,
        headers: HeaderStore | None = None,
        *,
        plan: ReadPlan | None = None,
        observe: Observer | None = None,
        clock: Callable[[], float] = time.time,
        today: Callable[[], dt.date] = dt.date.today,
    ) -> None:
        self.name = settings.name
        self.settings = settings
        self.peer = Peer(settings) if settings.querying else None
        self.headers = headers if settings.store_port is not None else None
        self._observe = observe
        self.plan = plan or ReadPlan()
        # The tags the mappings read become the C-FIND return keys (never those read only
        # inside items).
        self.keys = Keys(self.plan.tags, self.plan.inside_items)
        self.clock = clock
        self.today = today
        self._location = StudyLocation(settings.published_url, settings.name)
        self.windows = DateWindows(
            settings.lookback_days, settings.sweep_interval, clock=clock, today=today
        )
        self.finds = 0  # C-FIND round trips, for the bench and the leak test
        self.listing_finds = 0  # of which for listings (polls, sweep pages)
        self._counted: dict[str, tuple[int, float]] = {}  # key -> (instances read, when)
        self.identities: dict[str, str] = {}  # key -> patient digest, as last listed

    # --- the feed: a listing (`ListedFeed`: none to read)

    def list_studies(self) -> dict[str, int]:
        """Query mode: the polled window and, while a sweep runs, one older page, by C-FIND.
        Push only: nothing (the listener marks what it receives; a listing cannot see
        deletions, so it speaks for no study)."""
        covered: list[tuple[dt.date, dt.date]] = []
        counts: dict[str, int] = {}
        identities: dict[str, str] = {}
        if self.peer is not None:
            covered = self.windows.ranges()
            for first, last in covered:
                found = self._listing(first, last)
                if found.unusable:
                    log.warning(
                        "%d studies in the PACS's answer have no valid StudyInstanceUID",
                        found.unusable,
                        extra={"source": self.name, "count": found.unusable},
                    )
                counts.update(found.counts)
                identities.update(found.identities)
            now = self.clock()
            self._counted = {k: v for k, v in self._counted.items() if k in counts}
            for key, count in counts.items():
                if count < 0:  # no count from the PACS: what the last read found, for a while
                    read, at = self._counted.get(key, (UNKNOWN, 0.0))
                    counts[key] = read if now - at < RECOUNT_AFTER else UNKNOWN
        self.windows.listed(covered)
        self.identities = identities
        return counts

    def archive(self, span: DateSpan, after: str | None, limit: int) -> ArchivePage:
        """One C-FIND per 30 days of StudyDate, newest first; the position is the last day
        of the next window (`limit` is the PACS's to keep: one window is one answer)."""
        if self.peer is None:
            raise OperatorError(
                f"source {self.name!r} only receives pushes: it has no archive to list "
                "(send the studies to its listener instead)"
            )
        page = self.windows.archive_page(span, after)
        if page is None:
            return ArchivePage([], None)
        (start, end), following = page
        found = self._listing(start, end)
        return ArchivePage(list(found.counts), following)

    def _listing(self, first: dt.date, last: dt.date) -> Listing:
        """The studies of a date range; a range with more matches than one C-FIND may
        return is asked again in halves (one day that has more is an error that says so)."""
        self.listing_finds += 1
        try:
            return listed(as_json(a) for a in self._find(self.keys.window(first, last)))
        except TooManyMatches as exc:
            if first >= last:
                raise SourceUnavailable(
                    f"{exc}, for the single day {first:%Y-%m-%d}: raise "
                    "DICOMCAST_SOURCE_MAX_MATCHES to list it"
                ) from None
        (a, b), (c, d) = split(first, last)
        earlier = self._listing(a, b)
        earlier.update(self._listing(c, d))
        return earlier

    # --- one study

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        try:
            date, uid = key_parts(key)
        except ValueError:
            raise MappingError("not a DIMSE study key", detail=f"study key {key[:200]!r}") from None
        if self.headers is not None and unless_unstable:
            last = self.headers.last_received(self.name, key)
            if last is not None and self.clock() - last < self.settings.stable_age:
                return FetchedStudy(key, None, stable=False, study_uid=uid, unread=True)
        pushed = self.headers.received(self.name, key) if self.headers is not None else []
        if self.peer is None:
            instances = pushed
        else:
            found = self._from_pacs(uid, date)
            if found is None:  # a STUDY-level C-FIND on the UID agrees: gone, or moved
                return FetchedStudy.absent(key, uid)
            instances = self._with_pushed(key, found, pushed)
        keep = self.plan.tags
        if keep is not None:
            hook = dataset_filter(keep, self.plan.content_of)
            instances = [hook(dict(i)) for i in instances]
        views, orphans = build_study_views(instances)
        view = next((v for v in views if v.uid == uid), None)
        if view is None:
            if self.peer is None:  # push only: what was received is all there is
                return FetchedStudy.absent(key, uid)
            raise SourceUnavailable(
                "the PACS lists the study at STUDY level but no instance of it below; "
                "reading it again later"
            )
        self._counted[key] = (view.instance_count + view.hidden, self.clock())
        return FetchedStudy(key, view, True, uid, orphans)

    def _with_pushed(
        self, key: str, found: list[dict[str, Any]], pushed: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The PACS's instances, each with what its pushed header adds. The PACS is the
        authority: only instances it answers for count, its values win, and a pushed
        header that names another patient, study, series or SOP class than the PACS does
        (a correction since, or a sender claiming someone else's UIDs) is dropped."""
        by_sop = {text_value(i, SOP_UID): i for i in pushed}
        out: list[dict[str, Any]] = []
        contradicted: list[str] = []
        for answer in found:
            sop = text_value(answer, SOP_UID)
            header = by_sop.get(sop)
            if header is None:
                out.append(answer)
            elif any(
                header.get(tag, {}).get("Value") != answer.get(tag, {}).get("Value")
                for tag in AUTHORITY
                if tag in answer or tag in self.keys.asked
            ):
                contradicted.append(str(sop))
                out.append(answer)
            else:
                adds = {t: v for t, v in header.items() if t not in self.keys.asked}
                out.append(merged(adds, answer))
        if contradicted and self.headers is not None:
            self.headers.drop_received(self.name, contradicted)
            log.warning(
                "dropped %d pushed headers the PACS contradicts (patient, study, series or "
                "SOP class): the PACS's answer is used",
                len(contradicted),
                extra={"source": self.name, "study_key": key, "count": len(contradicted)},
            )
        return out

    def _from_pacs(self, uid: str, date: str | None) -> list[dict[str, Any]] | None:
        """The study's instances by C-FIND, level by level; None when the PACS has no study
        of this UID and date (deleted, or its StudyDate was corrected: another key)."""
        assert self.peer is not None
        try:
            return self._levels(uid, date)
        except TooManyMatches as exc:
            raise MappingError(
                "the PACS answers more matches for this study than one C-FIND may return",
                detail=str(exc),
            ) from None

    def _levels(self, uid: str, date: str | None) -> list[dict[str, Any]] | None:
        assert self.peer is not None
        # One association per C-FIND: reusing one for a study's queries raced inside
        # pynetdicom (a response taken for a request, now and then), and setting one up on
        # a LAN costs a few milliseconds.
        studies = self._find(self.keys.study(uid))
        if not studies:
            return None
        study = as_json(studies[0])
        if (text_value(study, STUDY_DATE) or None) != date:
            return None
        instances: list[dict[str, Any]] = []
        for series in self._find(self.keys.series(uid)):
            series_json = as_json(series)
            series_uid = text_value(series_json, SERIES_UID)
            if not is_uid(series_uid):
                # Sent back as an IMAGE-level key, it could widen the query (`*`) or reach
                # beyond the study; the README promises keys are UIDs only.
                raise MappingError(
                    "the PACS answered a series whose SeriesInstanceUID is not a UID",
                    detail=f"SeriesInstanceUID {str(series_uid)[:80]!r}",
                )
            assert series_uid is not None
            for image in self._find(self.keys.images(uid, series_uid)):
                instances.append(merged(study, series_json, as_json(image)))
        return instances

    def _find(self, query: Dataset) -> list[Dataset]:
        """One C-FIND, told to the request observer (metrics) like an HTTP request."""
        assert self.peer is not None
        started = time.monotonic()
        self.finds += 1
        try:
            result = self.peer.find(query)
        except Exception:
            if self._observe:
                self._observe(None, time.monotonic() - started)
            raise
        if self._observe:
            self._observe(200, time.monotonic() - started)
        return result

    def lookup_study(self, study_uid: str) -> list[str]:
        """The keys of the study with this UID (its StudyDate, asked of the PACS)."""
        if self.peer is None:
            return []
        answers = self._find(self.keys.study(study_uid))
        return [study_key(text_value(as_json(a), STUDY_DATE), study_uid) for a in answers]

    def location(self, key: str) -> StudyLocation:
        return self._location

    def default_location(self) -> StudyLocation:
        return self._location

    def check(self, timeout: float = 5.0) -> str:
        """C-ECHO to the PACS (query mode); a push-only source reports its listener."""
        if self.peer is None:
            return f"C-STORE listener on {self.settings.store_host}:{self.settings.store_port}"
        self.peer.echo()
        return f"PACS {self.peer.name} answers C-ECHO"

    def close(self) -> None:
        if self.peer is not None:
            self.peer.close()


def from_settings(settings: SourceSettings, context: SourceContext) -> DimseSource:
    """A DIMSE source, as the registry builds it: its listener keeps what it receives
    in `context.headers` (the state DB)."""
    return DimseSource(
        settings,
        context.headers,
        plan=context.plan,
        observe=context.observe,
        clock=context.clock,
        today=context.today,
    )


def check_cursor(settings: SourceSettings, value: str) -> None:
    """No change feed to position: its first poll reads the last `lookback_days`."""
    raise StoredValueError(no_feed(settings.name, DimseSource.following))
