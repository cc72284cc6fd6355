"""One study, top to bottom: read it from its source, map it, write it to FHIR, and say
what happened as an `Outcome`. Nothing here records anything in the state DB but two
deliberate exceptions (`multisource`'s contributions, and a slot of the deletion budget,
taken before a deletion so that workers together keep to it); the worker records every
outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from dicomcast.errors import DicomcastError, FhirConflict, SourceUnavailable
from dicomcast.fhir.upsert import FhirWriter
from dicomcast.mapping.mapper import MappedStudy, Mappings, search_token, study_token
from dicomcast.mapping.settings import MappingConfigs
from dicomcast.model import (
    Kind,
    Outcome,
    PatientPolicy,
    StudyLocation,
    StudyTask,
    Written,
    source_dependency,
)
from dicomcast.sources.base import Source
from dicomcast.state.locks import StudyLocks
from dicomcast.sync.endpoints import Endpoints
from dicomcast.sync.multisource import Compose, MultiSource
from dicomcast.sync.policy import FailurePolicy, decide

log = logging.getLogger(__name__)


class DeletionBudget(Protocol):
    """Takes one of a source's deletions for a study, or says the budget is spent."""

    def take_deletion(self, task: StudyTask, budget: int | None) -> bool: ...


class _Unlimited:
    def take_deletion(self, task: StudyTask, budget: int | None) -> bool:
        return True


@dataclass
class Reconciler:
    """Brings one study's FHIR state in line with its source's present state."""

    sources: Mapping[str, Source]
    mappings: Mappings
    writer: FhirWriter
    endpoints: Endpoints
    configs: MappingConfigs
    multi: MultiSource
    locks: StudyLocks
    policy: FailurePolicy
    patient_policy: PatientPolicy
    stable_wait_max: float  # longest wait for a study still receiving instances
    recheck: float  # how soon an unstable study is looked at again
    clock: Callable[[], float] = field(default=time.time)
    deletions: DeletionBudget = field(default_factory=_Unlimited)
    delete_budget: int | None = None  # deletions per source and hour; None: unlimited

    def sync(self, task: StudyTask, *, wait_for_stable: bool = False) -> Outcome:
        """The outcome of one attempt; never raises (a failure is an outcome too)."""
        attempt = _Attempt(task.study_uid, started_at=self.clock())
        try:
            outcome = self._sync(task, wait_for_stable, attempt)
        except Exception as exc:
            if not isinstance(exc, DicomcastError):
                log.exception(
                    "internal error syncing a study",
                    extra={
                        "source": task.source,
                        "study_key": task.study_key,
                        "study_uid": attempt.study_uid,
                    },
                )
            outcome = decide(exc, task, self.policy, now=self.clock())
        return replace(
            outcome,
            answered=frozenset(attempt.answered),
            study_uid=attempt.study_uid,
            seen_count=attempt.count,
            started_at=attempt.started_at,
        )

    def _sync(self, task: StudyTask, wait_for_stable: bool, attempt: _Attempt) -> Outcome:
        source = self.sources[task.source]
        # While a study still receives instances, wait (up to stable_wait_max) instead of
        # writing a version per arrival; the Stable event makes it due again.
        now = self.clock()
        may_wait = wait_for_stable and now - (task.dirty_since or now) < self.stable_wait_max
        fetched = source.fetch_study(task.study_key, unless_unstable=may_wait)
        attempt.answered.add(source_dependency(task.source))
        attempt.study_uid = fetched.study_uid or task.study_uid
        if fetched.unread:
            # Orthanc turns a study stable StableAge after its last instance, in steps of
            # about half a second; look again soon so the sync follows within a tick.
            return Outcome(Kind.DEFERRED, retry_at=self.clock() + self.recheck)
        location = source.location(task.study_key)
        if fetched.view is None:
            if not fetched.gone:  # a source's bug must never read as a deletion
                raise SourceUnavailable("the source returned no study without proof it is gone")
            uid = attempt.study_uid
            if not self.multi.enabled and uid and self._moved(source, task, uid):
                # The archive holds the study under another key now (e.g. its PatientID was
                # corrected): that key writes it, to its new Patient. Removing it here
                # would delete what that key just wrote.
                return Outcome(Kind.DELETED, reason="moved: held under another key")
            if self._writes_deletion(task) and not self.deletions.take_deletion(
                task, self.delete_budget
            ):
                return Outcome(
                    Kind.HELD,
                    reason=f"the budget of {self.delete_budget} deletions an hour is spent; "
                    "FHIR is left as it is (dicomcast deletions approve|reject)",
                )
            self._remove(task, attempt, location)
            return Outcome(Kind.DELETED)
        endpoint = self.endpoints.ref(task.source, location)
        mapped = self.mappings.map_study(
            fetched.view, self.configs.of(task.source, location), endpoint, scope=location.scope
        )
        count = fetched.view.instance_count + fetched.view.hidden  # as the source counts
        attempt.count = count
        attempt.study_uid = fetched.view.uid
        warnings = tuple(fetched.warnings) + mapped.warnings
        del fetched  # a large study's metadata need not live through the write
        match = search_token(mapped.imaging_study)
        with self.locks.hold(match) as held:
            if not held:  # another worker writes this study now: look again soon
                return Outcome(Kind.DEFERRED, retry_at=self.clock() + self.recheck)
            return self._write(task, attempt, mapped, match, endpoint, count, warnings)

    def _write(
        self,
        task: StudyTask,
        attempt: _Attempt,
        mapped: MappedStudy,
        match: str,
        endpoint: str | None,
        count: int,
        warnings: tuple[str, ...],
    ) -> Outcome:
        compose: Compose | None = None
        shared = False  # another source holds this study too: it exists, skip the blind create
        if self.multi.enabled:
            mapped, compose, shared = self.multi.keep(
                task.source, task.study_key, match, mapped, endpoint
            )
        digest = mapped.digest(self.patient_policy)
        if digest == task.content_hash and task.fhir_imagingstudy_id:
            written = Written(
                attempt.study_uid,
                digest,
                task.fhir_patient_id,
                task.fhir_imagingstudy_id,
                count,
                warnings,
                match,
            )
            return Outcome(Kind.UNCHANGED, written=written)
        result = self.writer.upsert_study(
            mapped,
            new=task.never_written and not shared,
            compose=compose,
            study_id=task.fhir_imagingstudy_id,
        )
        attempt.answered.add("fhir")
        written = Written(
            attempt.study_uid,
            digest,
            result.patient_id,
            result.imaging_study_id,
            count,
            warnings,
            match,
        )
        return Outcome(Kind.SYNCED if result.wrote else Kind.UNCHANGED, written=written)

    def _writes_deletion(self, task: StudyTask) -> bool:
        """Whether removing this study deletes anything from FHIR (one never written, or
        held by another source too, costs no deletion)."""
        if self.multi.enabled:
            return task.fhir_imagingstudy_id is not None or task.match_key is not None
        return task.fhir_imagingstudy_id is not None

    @staticmethod
    def _moved(source: Source, task: StudyTask, study_uid: str) -> bool:
        """Whether the source still holds this StudyInstanceUID under another study key of
        the same scope (a study in another data partition is another ImagingStudy)."""
        scope = source.location(task.study_key).scope
        return any(
            key != task.study_key and source.location(key).scope == scope
            for key in source.lookup_study(study_uid)
        )

    def _remove(self, task: StudyTask, attempt: _Attempt, location: StudyLocation) -> None:
        """Reflect a study gone from one source: with several sources, write what the
        others still hold of it; otherwise (or when none does) remove the ImagingStudy."""
        uid = attempt.study_uid
        match = task.match_key or (study_token(uid, location.scope) if uid else None)
        if self.multi.enabled:
            match = self.multi.drop(task.source, task.study_key) or match
            if match:
                with self.locks.hold(match) as held:
                    if not held:
                        raise FhirConflict("another worker writes this study now; looking again")
                    left = self.multi.remaining(uid, match)
                    if left is None:
                        self.writer.remove_study(match)
                    else:
                        self.writer.upsert_study(left[0], compose=left[1])
                    attempt.answered.add("fhir")
            return
        if match and task.fhir_imagingstudy_id:
            self.writer.remove_study(match)
            attempt.answered.add("fhir")


@dataclass
class _Attempt:
    """What one attempt learns on the way: the study's UID and which servers answered."""

    study_uid: str | None
    started_at: float | None = None
    answered: set[str] = field(default_factory=set)
    count: int | None = None  # the instance count the source showed
