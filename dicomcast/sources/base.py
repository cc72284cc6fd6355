"""What every kind of DICOM server offers the worker: a change feed that names studies, the
current state of one study, where a study can be retrieved from (its FHIR Endpoint), and,
for servers whose feed does not log deletions, a cheap list of all studies.

A study key is the source's own name for a study, opaque to everyone else: an Orthanc study
ID, or `partition/StudyInstanceUID` for the Microsoft DICOM service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import httpx

from dicomcast.http import RetryPolicy
from dicomcast.model import DateSpan, DirtyMark, Skipped, StudyLocation
from dicomcast.studyview import StudyView

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
class SourceContext:
    """What the assembly hands every kind besides its own settings."""

    verify: bool | str = True
    timeout: float = 30.0
    transport: httpx.BaseTransport | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_bytes: int = 256 * 2**20  # MAX_STUDY_BYTES
    headers: Any = None  # where a C-STORE listener keeps what it received (the state DB)


@runtime_checkable
class ListsIdentities(Protocol):
    """A source whose listing also shows who each study's patient is (a PACS answering
    C-FIND): a digest per study key, from the last `list_studies`."""

    identities: dict[str, str]


class Source(Protocol):
    name: str
    kind: str
    logs_deletes: bool  # the feed names deleted studies: no reconcile scan needed
    lists_changes: bool  # no change feed: each poll compares `list_studies` with the state DB
    observe: Callable[[int | None, float], None] | None  # told of every request, for metrics
    keep_tags: frozenset[str] | None  # the only tags worth reading (None: every tag)
    content_of: frozenset[str]  # SOP classes whose SR content tree is worth reading
    inside_items: frozenset[str]  # tags read only inside items (never asked for by name)

    def read_changes(self, cursor: str | None, limit: int) -> FeedPage: ...

    def head(self) -> str:
        """The feed position of now: reading from it gives only changes still to come
        (`cursor set head`, to start from now instead of the archive's history)."""
        ...

    def next_position(self, cursor: str | None) -> str:
        """The cursor one entry past `cursor`: how an entry that cannot be read at all is
        skipped (only once the server has shown it answers everything else)."""
        ...

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        """The study's current state; with `unless_unstable`, a study still receiving
        instances comes back `unread` (cheap), to be read once it is complete."""
        ...

    def archive(self, span: DateSpan, after: str | None, limit: int) -> ArchivePage:
        """A page of about `limit` of the studies the archive holds in `span`, starting at
        `after` (None: the first page); the position is opaque, and resumes a listing."""
        ...

    def list_studies(self) -> dict[str, int]:
        """Every study key the server holds now, with its instance count (only called when
        the feed does not log deletes): -1 when the server cannot say for this study (it is
        synced again), `UNCOUNTED` when it keeps no counts (only unseen studies are)."""
        ...

    def covers(self, key: str) -> bool:
        """Whether the last `list_studies` spoke for this study: if it did and the study
        was not in it, the study is gone (a listing of part of an archive, such as a PACS's
        recent dates, does not speak for the rest)."""
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
