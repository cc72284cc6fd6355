"""Following an archive that has no change feed by listing it, window by window of
StudyDate (a PACS over C-FIND, any DICOMweb server over QIDO-RS).

Each poll lists the last `lookback_days` and, while a sweep runs, one older 30-day page;
a study's key carries its StudyDate (`YYYYMMDD/UID`), so the state DB alone tells which
listing spoke for a study: one missing from a range that was listed is gone, one that only
aged out of the window is not. A backfill walks the archive 30 days at a time, newest
first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dicomcast.model import DateSpan
from dicomcast.sources.base import UNKNOWN
from dicomcast.studyview import STUDY_UID, is_uid, text_value

STUDY_DATE = "00080020"
INSTANCES = "00201208"  # NumberOfStudyRelatedInstances
PATIENT = ("00100020", "00100021", "00100010")  # PatientID, its issuer, PatientName
SWEEP_PAGE_DAYS = 30
SWEEP_FROM = dt.date(1985, 1, 1)  # ACR-NEMA 1.0: no DICOM study is older
Range = tuple[dt.date, dt.date]


def study_key(date: str | None, uid: str) -> str:
    """A study's key: `YYYYMMDD/UID` (`-/UID` without a usable date). The date in the key
    tells, from the state DB alone, whether a study lies in the polled window."""
    return f"{date if _is_date(date) else '-'}/{uid}"


def _is_date(text: str | None) -> bool:
    """A full DA value (YYYYMMDD), the only date a key carries."""
    return bool(text) and len(str(text)) == 8 and str(text).isascii() and str(text).isdigit()


def identity(data: dict[str, Any], tags: tuple[str, ...] = PATIENT) -> str:
    """A digest of what identifies a study's patient in a listing (PatientID, its issuer,
    the name): it changes when the archive corrects the patient, and holds no readable PHI."""
    values = [json.dumps(data.get(tag, {}).get("Value"), sort_keys=True) for tag in tags]
    return hashlib.sha256("\x1f".join(values).encode()).hexdigest()[:32]


def key_parts(key: str) -> tuple[str | None, str]:
    """(StudyDate or None, StudyInstanceUID) of a key; ValueError when it is not one."""
    date, _, uid = key.partition("/")
    if not is_uid(uid) or not (date == "-" or _is_date(date)):
        raise ValueError("not a study key (YYYYMMDD/UID)")
    return (None if date == "-" else date), uid


@dataclass
class Listing:
    """A study search's answer: key -> NumberOfStudyRelatedInstances (-1: no count given,
    always "changed"), key -> patient identity digest, and how many had no valid UID."""

    counts: dict[str, int] = field(default_factory=dict)
    identities: dict[str, str] = field(default_factory=dict)
    unusable: int = 0

    def update(self, other: Listing) -> None:
        self.counts.update(other.counts)
        self.identities.update(other.identities)
        self.unusable += other.unusable


def listed(answers: Iterable[dict[str, Any]]) -> Listing:
    """The listing in a study search's answers (DICOM JSON, whichever protocol)."""
    found = Listing()
    for data in answers:
        uid = text_value(data, STUDY_UID)
        if not is_uid(uid):
            found.unusable += 1
            continue
        assert uid is not None
        try:
            count = int(str(text_value(data, INSTANCES)))
        except ValueError:
            count = UNKNOWN
        key = study_key(text_value(data, STUDY_DATE), uid)
        found.counts[key] = count
        found.identities[key] = identity(data)
    return found


class DateWindows:
    """Which StudyDate ranges a poll lists, and which ranges the last listing spoke for."""

    def __init__(
        self,
        lookback_days: int,
        sweep_interval: float,
        *,
        clock: Callable[[], float] = time.time,
        today: Callable[[], dt.date] = dt.date.today,
    ) -> None:
        self.lookback_days = lookback_days
        self.sweep_interval = sweep_interval
        self.clock = clock
        self.today = today
        self._covered: list[tuple[str, str]] = []  # YYYYMMDD ranges the last listing covered
        self._sweep_at: dt.date | None = None  # the end of the next sweep page
        self._sweep_started = 0.0

    def ranges(self) -> list[Range]:
        """This poll's ranges: the window, and one older page while a sweep runs (a sweep
        starts every `sweep_interval` seconds and reads one page per poll, newest first)."""
        end = self.today()
        start = end - dt.timedelta(days=self.lookback_days)
        found = [(start, end)]
        page = self._sweep_page(start)
        if page:
            found.append(page)
        return found

    def listed(self, ranges: list[Range]) -> None:
        """The listing of these ranges succeeded: they speak for their studies now."""
        self._covered = [(f"{a:%Y%m%d}", f"{b:%Y%m%d}") for a, b in ranges]

    def covers(self, key: str) -> bool:
        """Whether the last listing spoke for this study: its date lies in a listed range
        (absent from the listing then means gone)."""
        try:
            date, _ = key_parts(key)
        except ValueError:
            return False
        return date is not None and any(a <= date <= b for a, b in self._covered)

    def archive_page(self, span: DateSpan, after: str | None) -> tuple[Range, str | None] | None:
        """One 30-day page of a backfill, newest first, and the position after it; None
        past the start of `span`."""
        first = max(SWEEP_FROM, span.since or SWEEP_FROM)
        end = (
            dt.datetime.strptime(after, "%Y%m%d").date() if after else (span.until or self.today())
        )
        if end < first:
            return None
        start = max(first, end - dt.timedelta(days=SWEEP_PAGE_DAYS - 1))
        following = start - dt.timedelta(days=1)
        return (start, end), (f"{following:%Y%m%d}" if following >= first else None)

    def _sweep_page(self, window_start: dt.date) -> Range | None:
        if not self.sweep_interval:
            return None
        if self._sweep_at is None:
            if self.clock() - self._sweep_started < self.sweep_interval:
                return None
            self._sweep_started = self.clock()
            self._sweep_at = window_start - dt.timedelta(days=1)
        end = self._sweep_at
        start = max(SWEEP_FROM, end - dt.timedelta(days=SWEEP_PAGE_DAYS - 1))
        self._sweep_at = None if start <= SWEEP_FROM else start - dt.timedelta(days=1)
        return start, end


def split(first: dt.date, last: dt.date) -> tuple[Range, Range]:
    """A range in two halves (a listing past the server's cap is asked again in halves)."""
    middle = first + (last - first) // 2
    return (first, middle), (middle + dt.timedelta(days=1), last)


class ListedFeed:
    """An archive followed by listing it each poll (`StudyListing` without `ChangeFeed`):
    there is no feed to read or move. `following` says how, for the operator who tries."""

    name: str
    windows: DateWindows
    following = "lists its archive"

    def covers(self, key: str) -> bool:
        return self.windows.covers(key)


def no_feed(name: str, following: str) -> str:
    """Why a listed source has no position to set (`cursor set`)."""
    return (
        f"source {name!r} {following} and has no change feed to move: its first poll reads "
        "the studies of the last lookback_days (set that instead)"
    )
