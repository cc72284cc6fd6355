"""What a kind of DICOM server offers the worker: every kind, the current state of one study
and where it is retrieved from (its FHIR Endpoint); each kind, some of these abilities,
declared by the protocols its class implements: a change feed that names studies, a cheap
listing of its studies, a listing of its archive by date (backfills).

A study key is the source's own name for a study, opaque to everyone else: an Orthanc study
ID, or `partition/StudyInstanceUID` for the Microsoft DICOM service."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx

from dicomcast.errors import OperatorError
from dicomcast.http import Observer, RetryPolicy
from dicomcast.model import DateSpan, DirtyMark, Skipped, StudyLocation
from dicomcast.studyview import StudyView

UNKNOWN = -1  # a listed study whose instance count the server did not say
UNCOUNTED = -2  # a listed study whose instance count the source does not keep


@dataclass(frozen=True)
class FeedPage:
    """One read of the change feed. `cursor` is where the next read starts.

    `reset` means the server's feed went backwards (its database was replaced): the caller
    restarts from the beginning and scans for studies that vanished.
    """

    marks: list[DirtyMark]
    cursor: str
    head: str | None
    done: bool
    reset: bool = False
    changes_read: int = 0
    skipped: list[Skipped] = field(default_factory=list)  # entries that could not be used


@dataclass(frozen=True)
class ArchivePage:
    """One page of a listing of the archive's studies (for a backfill). `after` is where
    the next page starts; None after the last page."""

    keys: list[str]
    after: str | None


@dataclass(frozen=True)
class FetchedStudy:
    """A study as the server has it now. `view` is None when the study no longer exists
    (`gone`), or, with `unread`, when it is still receiving instances and was not read.

    `gone` is a claim the worker acts on by deleting FHIR data, so a source sets it only
    after a second, independent read agrees (`FetchedStudy.absent`); a view that is None
    without it is refused as a source failure, never taken as a deletion."""

    key: str
    view: StudyView | None
    stable: bool = True
    study_uid: str | None = None
    warnings: list[str] = field(default_factory=list)
    unread: bool = False
    gone: bool = False

    @classmethod
    def absent(cls, key: str, study_uid: str | None = None) -> FetchedStudy:
        """The study is gone, as two reads of the source agree."""
        return cls(key, None, study_uid=study_uid, gone=True)


@dataclass(frozen=True)
class ReadPlan:
    """What the mappings read, so a source asks for and keeps no more: `tags` (None: all),
    the SOP classes whose SR content tree is kept, and tags read only inside items."""

    tags: frozenset[str] | None = None
    content_of: frozenset[str] = frozenset()
    inside_items: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SourceContext:
    """What the assembly hands every kind besides its own settings; everything a source
    needs is given when it is built (nothing is set on it afterwards)."""

    verify: bool | str = True
    timeout: float = 30.0
    transport: httpx.BaseTransport | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_bytes: int = 256 * 2**20  # MAX_STUDY_BYTES
    headers: Any = None  # where a C-STORE listener keeps what it received (the state DB)
    plan: ReadPlan = field(default_factory=ReadPlan)
    observe: Observer | None = None  # told of every request, for metrics
    today: Callable[[], dt.date] = dt.date.today  # where a listing's date windows end
    clock: Callable[[], float] = time.time  # when a listing's sweeps are due


class Source(Protocol):
    """What every kind does. What only some can do is a protocol of its own below (a kind
    has an ability when its class has the methods): `ChangeFeed`, `StudyListing`,
    `ArchiveListing`, `ListsIdentities`, `Notifications`."""

    name: str
    kind: str

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        """The study's current state; with `unless_unstable`, a study still receiving
        instances comes back `unread` (cheap), to be read once it is complete. `gone`
        only once a second read confirms it (`FetchedStudy.absent`)."""
        ...

    def location(self, key: str) -> StudyLocation:
        """Where the study with this key is retrieved from; never a request."""
        ...

    def default_location(self) -> StudyLocation | None:
        """The location of every study, when it does not depend on the study (its Endpoint
        is then made at start-up); None when it does (data partitions)."""
        ...

    def lookup_study(self, study_uid: str) -> list[str]:
        """The keys of the studies with this StudyInstanceUID (for operators' `resync`)."""
        ...

    def check(self, timeout: float = 5.0) -> str:
        """One quick unretried probe: SourceUnavailable when unreachable, else a description."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class ChangeFeed(Protocol):
    """Reads a change feed that names studies. A source without one is followed by its
    listing alone (`StudyListing`); one without a listing logs deletions in its feed."""

    def read_changes(self, cursor: str | None, limit: int) -> FeedPage: ...

    def head(self) -> str:
        """The feed position of now: reading from it gives only changes still to come
        (`cursor set head`, to start from now instead of the archive's history)."""
        ...

    def next_position(self, cursor: str | None) -> str:
        """The cursor one entry past `cursor`: how an entry that cannot be read at all is
        skipped (only once the server has shown it answers everything else)."""
        ...


@runtime_checkable
class StudyListing(Protocol):
    """Lists the studies it holds, cheaply: with a change feed, for the reconcile scan
    (the feed does not log deletions); without one, as the feed itself."""

    def list_studies(self) -> dict[str, int]:
        """Every study key the server holds now, with its instance count: `UNKNOWN` when
        the server cannot say for this study (it is synced again), `UNCOUNTED` when it keeps
        no counts (only unseen studies are)."""
        ...

    def covers(self, key: str) -> bool:
        """Whether the last `list_studies` spoke for this study: if it did and the study
        was not in it, the study is gone (a listing of part of an archive, such as a PACS's
        recent dates, does not speak for the rest)."""
        ...


@runtime_checkable
class ArchiveListing(Protocol):
    """Enumerates the archive by study date, for a backfill and `verify`."""

    def archive(self, span: DateSpan, after: str | None, limit: int) -> ArchivePage:
        """A page of about `limit` of the studies the archive holds in `span`, starting at
        `after` (None: the first page); the position is opaque, and resumes a listing."""
        ...


@dataclass(frozen=True)
class Notified:
    """One pull of change notifications: the studies they name, the entries that name none
    (recorded, never retried), and the receipt that acknowledges them all."""

    marks: list[DirtyMark]
    skipped: list[Skipped]
    receipt: list[str]  # opaque to all but the source (Pub/Sub ack IDs)


@runtime_checkable
class Notifications(Protocol):
    """Hears of changes between listings (a Google DICOM store's Pub/Sub notifications):
    a listed source so told needs its listing only now and then, for what notifications
    never say (deletions, lost messages)."""

    def notifications(self, limit: int) -> Notified:
        """Up to `limit` notifications, not yet acknowledged (empty: none waiting)."""
        ...

    def acknowledge(self, notified: Notified) -> None:
        """Done with these: called only once their marks are committed (until then, and
        if this fails, they come again: at least once)."""
        ...


@runtime_checkable
class ListsIdentities(Protocol):
    """A listing that also shows who each study's patient is (a PACS answering C-FIND): a
    digest per study key, from the last `list_studies`."""

    identities: dict[str, str]


def listing_is_feed(source: object) -> bool:
    """No change feed: each poll compares the listing with the state DB."""
    return isinstance(source, StudyListing) and not isinstance(source, ChangeFeed)


def logs_deletes(source: object) -> bool:
    """A change feed and no listing: the feed names deleted studies, no scan is needed."""
    return isinstance(source, ChangeFeed) and not isinstance(source, StudyListing)


def archive_of(source: Source) -> ArchiveListing:
    """The source's archive listing, for a backfill or `verify`; OperatorError for a kind
    that cannot enumerate its archive."""
    if isinstance(source, ArchiveListing):
        return source
    raise OperatorError(
        f"source {source.name!r} ({source.kind}) cannot list its archive by date: "
        "a backfill or verify needs that"
    )
