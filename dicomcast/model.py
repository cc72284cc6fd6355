"""Shared data types: the leaf module every layer may import, and that imports no layer.

A study's path through dicomcast, and the type it travels as:
feed -> `DirtyMark` -> dirty set -> `StudyTask` (claimed) -> reconcile -> `Outcome` ->
the worker records it (a `Written` on success).
"""

from __future__ import annotations

import datetime as dt
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

PatientPolicy = Literal["fill-missing", "never", "overwrite"]
DeletedStudyPolicy = Literal["delete", "entered-in-error"]
# What a patient ID whose issuer no setting places is written under: nothing (the study
# is parked), the default system (two issuers' patients may then merge), or a system
# derived from the issuer's name.
UnknownIssuerPolicy = Literal["park", "default-system", "derive"]
# ImagingStudy.basedOn: resolved to the ServiceRequest, by identifier only, or none.
BasedOnPolicy = Literal["resolve", "identifier", "off"]


@dataclass(frozen=True)
class DirtyMark:
    """A study the feed says changed; `event_time` is the source event's time (for lag);
    `count` the instance count a listing showed (a failed study's is compared with it),
    `identity` the digest of the patient identity it showed (a correction in place)."""

    study_key: str
    event_time: float | None = None
    study_uid: str | None = None
    count: int | None = None
    identity: str | None = None


@dataclass(frozen=True)
class KnownStudy:
    """What the state DB knows of a study, for a listing to compare with: its status, the
    instance count last synced, and the count seen when it was last listed or failed."""

    status: str
    count: int | None
    seen_count: int | None = None
    identity: str | None = None  # the patient identity digest last listed


@dataclass(frozen=True)
class Skipped:
    """A feed entry that could not be used: where it stood, and why (never patient data)."""

    position: str
    reason: str


@dataclass(frozen=True)
class StudyTask:
    """A snapshot of a dirty study, taken when it was claimed for syncing."""

    id: int
    source: str
    study_key: str
    study_uid: str | None
    generation: int
    attempts: int
    dirty_since: float | None
    event_time: float | None
    content_hash: str | None
    fhir_patient_id: str | None
    fhir_imagingstudy_id: str | None
    instance_count: int | None
    match_key: str | None = None
    failed_at: float | None = None  # when its last attempt failed
    error_status: int | None = None  # and with which HTTP status
    priority: int = 0  # 0: a live change; 1: only a backfill asked for it
    deletion_approved: bool = False  # an operator approved deleting it beyond the budget

    @property
    def never_written(self) -> bool:
        """No sync of this study has reached FHIR yet (as far as the state DB knows)."""
        return self.fhir_imagingstudy_id is None and self.content_hash is None


@dataclass(frozen=True)
class Written:
    """What a successful sync wrote (or found already written): kept for the next sync's
    no-op check and for operators."""

    study_uid: str | None
    content_hash: str | None
    fhir_patient_id: str | None
    fhir_imagingstudy_id: str | None
    instance_count: int | None
    warnings: Sequence[str] = ()
    match_key: str | None = None


@dataclass(frozen=True)
class Contribution:
    """A source's mapped part of a study: what it would write if it were the only source."""

    source: str
    study_key: str
    body: dict[str, Any]


class Kind(StrEnum):
    """What became of one sync attempt. The first three settle the study."""

    SYNCED = "synced"  # FHIR was written
    UNCHANGED = "unchanged"  # nothing to write
    DELETED = "deleted"  # gone from the source, and FHIR reflects it
    DEFERRED = "deferred"  # not tried now (still receiving instances, paused, stopping)
    RETRY = "retry"  # failed; try again at `retry_at`, an attempt spent
    PAUSED = "paused"  # a server is down: wait for it, no attempt spent
    PARKED = "parked"  # failed for good until something changes: an operator's turn
    HELD = "held"  # gone from the source, but the deletion budget is spent: an operator's turn

    @property
    def settled(self) -> bool:
        return self in (Kind.SYNCED, Kind.UNCHANGED, Kind.DELETED)

    @property
    def label(self) -> str:
        """The outcome as metrics, logs and `run --once` name it (parked studies are
        `failed`, paused ones `retry`, as operators have always seen them)."""
        return {Kind.PARKED: "failed", Kind.PAUSED: "retry"}.get(self, self.value)


@dataclass(frozen=True)
class Outcome:
    """The result of syncing one study, as a value: the worker records it, nothing else does.

    `written` is set for synced/unchanged; `reason` (never patient data), `detail` (the
    server's words, which may hold some), `error_kind` and `status` for failures;
    `retry_at` for deferred/retry/paused (None: at once); `dependency` names the server a
    pause belongs to; `answered` lists the servers that answered during the attempt (their
    pauses can clear); `study_uid` is the best UID known, for log lines."""

    kind: Kind
    written: Written | None = None
    reason: str | None = None
    detail: str | None = None
    error_kind: str | None = None
    status: int | None = None
    retry_at: float | None = None
    retry_after: float | None = None
    dependency: str | None = None
    answered: frozenset[str] = frozenset()
    study_uid: str | None = None
    seen_count: int | None = None  # the instance count the source showed, when read
    started_at: float | None = None  # when the attempt began: its answers are newer


@dataclass(frozen=True)
class StudyLocation:
    """Where a study lives: the DICOMweb base its FHIR Endpoint publishes, and the namespace
    its StudyInstanceUID is unique in (None: the shared one, where the same UID from several
    sources is one study; a URI for a data partition that keeps its studies apart)."""

    address: str
    endpoint_name: str
    scope: str | None = None


@dataclass(frozen=True)
class DateSpan:
    """The StudyDate range a backfill covers; an open end is None."""

    since: dt.date | None = None
    until: dt.date | None = None

    @property
    def query(self) -> str | None:
        """As a DICOM date range matching key (`20200101-20201231`, `20200101-`); None for
        the whole archive."""
        if self.since is None and self.until is None:
            return None
        return f"{_day(self.since)}-{_day(self.until)}"

    def holds(self, study_date: object) -> bool:
        """Whether a StudyDate (`YYYYMMDD`) falls in the span; an unreadable one only in
        the whole archive's."""
        if self.since is None and self.until is None:
            return True
        try:
            day = dt.datetime.strptime(str(study_date), "%Y%m%d").date()
        except ValueError:
            return False
        return (self.since is None or day >= self.since) and (
            self.until is None or day <= self.until
        )


def _day(date: dt.date | None) -> str:
    return f"{date:%Y%m%d}" if date else ""


@dataclass(frozen=True)
class BackfillProgress:
    """How far one `dicomcast backfill` run got; `rate` in studies settled per second since
    it started."""

    id: int
    source: str
    since: str | None
    until: str | None
    listed: int
    marked: int
    done: int
    failed: int
    listing: bool  # still listing the archive
    started_at: float
    finished_at: float | None
    rate: float
    max_rate: float | None = None  # its pace: studies/s, all workers together
    max_requests: float | None = None  # FHIR requests/s, all workers together

    @property
    def waiting(self) -> int:
        return max(0, self.marked - self.done - self.failed)

    @property
    def eta(self) -> float | None:
        """Seconds until every marked study is settled, at the rate so far."""
        if self.finished_at is not None or not self.waiting:
            return 0.0
        return self.waiting / self.rate if self.rate > 0 else None


@dataclass(frozen=True)
class SourceSummary:
    """One source's state at a glance, for `status`, metrics and alerts."""

    source: str
    cursor: str | None = None
    feed_head: str | None = None
    holder: str | None = None
    held_until: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    oldest_event: float | None = None  # earliest change not yet in FHIR
    oldest_dirty: float | None = None  # when the longest-waiting study became dirty
    last_success_at: float | None = None
    last_poll_at: float | None = None
    resets: int = 0
    feed_skips: int = 0  # feed entries skipped because they could not be used
    seen: int = 0  # clean without a sync: recorded as seen by `cursor set head`
    feed_error: str | None = None  # why the feed stopped on a stored value it cannot use
    backfill: BackfillProgress | None = None  # the newest unfinished backfill run

    def holder_now(self, now: float | None = None) -> str | None:
        """The worker holding the source now; None when nobody does or its lease ran out."""
        now = time.time() if now is None else now
        return self.holder if self.held_until and self.held_until >= now else None

    @property
    def dirty(self) -> int:
        return self.counts.get("dirty", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)


def source_dependency(name: str) -> str:
    """A source's name as a dependency: its pause, readiness check and metrics label."""
    return f"source:{name}"


@dataclass
class RoundStats:
    """What one sync round did: its studies' outcomes by label."""

    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def attempted(self) -> int:
        return sum(self.outcomes.values())
