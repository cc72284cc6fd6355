"""The failure policy and server pauses as pure functions: a fixed clock and jitter, no
sleeping, no servers."""

from __future__ import annotations

import pytest

from dicomcast.errors import (
    FhirConflict,
    FhirRejected,
    FhirUnavailable,
    MappingError,
    SourceUnavailable,
    StateUnavailable,
)
from dicomcast.model import Kind, KnownStudy, StudyTask
from dicomcast.sync.feed import _changed
from dicomcast.sync.pauses import Pause, Pauses
from dicomcast.sync.policy import FailurePolicy, backoff, decide, repeated_outage

POLICY = FailurePolicy(max_attempts=3, backoff_base=5.0, backoff_max=60.0)
NO_JITTER = lambda low, high: 1.0  # noqa: E731


def task(attempts: int = 0) -> StudyTask:
    return StudyTask(7, "pacs", "key", "1.2.3", 1, attempts, 0.0, 0.0, None, None, None, None)


def test_backoff_doubles_from_base_to_cap_and_never_undercuts_retry_after() -> None:
    delays = [backoff(step, 5.0, 60.0, jitter=NO_JITTER) for step in range(1, 7)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert backoff(1, 5.0, 60.0, retry_after=30.0, jitter=NO_JITTER) == 30.0
    assert backoff(3, 5.0, 60.0, jitter=lambda low, high: low) == 16.0  # -20 %
    assert backoff(3, 5.0, 60.0, jitter=lambda low, high: high) == 24.0  # +20 %


def test_a_refusal_parks_the_study_with_the_servers_words() -> None:
    refused = FhirRejected("transaction: HTTP 422", status=422, outcome="error invalid uid")
    outcome = decide(refused, task(), POLICY, now=100.0)
    assert (outcome.kind, outcome.status, outcome.error_kind) == (Kind.PARKED, 422, "FhirRejected")
    assert (outcome.reason, outcome.detail) == ("transaction: HTTP 422", "error invalid uid")
    unmappable = decide(MappingError("no PatientID"), task(), POLICY, now=100.0)
    assert (unmappable.kind, unmappable.reason) == (Kind.PARKED, "no PatientID")


def test_a_studys_transient_failure_backs_off_then_parks_after_max_attempts() -> None:
    error = FhirUnavailable("transaction: HTTP 500", status=500)
    first = decide(error, task(0), POLICY, now=100.0, jitter=NO_JITTER)
    assert (first.kind, first.retry_at, first.status) == (Kind.RETRY, 105.0, 500)
    second = decide(error, task(1), POLICY, now=100.0, jitter=NO_JITTER)
    assert second.retry_at == 110.0
    assert decide(error, task(2), POLICY, now=100.0).kind is Kind.PARKED
    conflict = decide(FhirConflict("kept changing"), task(0), POLICY, now=0.0, jitter=NO_JITTER)
    assert conflict.kind is Kind.RETRY


@pytest.mark.parametrize(
    ("error", "dependency"),
    [
        (FhirUnavailable("HTTP 503", outage=True, status=503, retry_after=7.0), "fhir"),
        (SourceUnavailable("refused", outage=True), "source:pacs"),
        (StateUnavailable("disk I/O error"), "state"),
    ],
)
def test_an_outage_pauses_its_server_and_spends_no_attempt(
    error: Exception, dependency: str
) -> None:
    outcome = decide(error, task(attempts=2), POLICY, now=100.0)
    assert (outcome.kind, outcome.dependency) == (Kind.PAUSED, dependency)
    assert outcome.kind.label == "retry"  # as operators and metrics have always named it
    if dependency == "fhir":
        assert (outcome.retry_after, outcome.status) == (7.0, 503)


def test_a_bug_of_ours_parks_the_study_as_an_internal_error() -> None:
    outcome = decide(KeyError("series"), task(), POLICY, now=0.0)
    assert (outcome.kind, outcome.error_kind) == (Kind.PARKED, "InternalError")
    assert (outcome.reason, outcome.detail) == ("internal error: KeyError", "'series'")


def test_a_pause_grows_while_the_outage_lasts_and_clears_when_the_server_answers() -> None:
    now = [1000.0]
    pause = Pause("fhir", 1.0, 8.0, clock=lambda: now[0], jitter=NO_JITTER)
    assert pause.trip("down") == 1001.0 and pause.active()
    assert pause.trip("still down") == 1001.0  # during one pause: one step, not two
    now[0] = 1001.5
    assert not pause.active()
    assert pause.trip("down again") == 1003.5 and pause.streak == 2  # doubled
    assert pause.trip("throttled", retry_after=30.0) == 1031.5  # Retry-After wins
    pause.clear()
    assert pause.active()  # no answer ends a pause before the server's Retry-After
    now[0] = 1031.5
    pause.clear()
    assert (pause.active(), pause.streak, pause.reason) == (False, 0, None)


def test_pauses_say_when_the_longest_active_one_ends() -> None:
    now = [0.0]
    pauses = Pauses(["fhir", "state", "source:a"], 1.0, 60.0, clock=lambda: now[0])
    assert pauses.until(["fhir", "source:a"]) is None
    pauses["source:a"].trip("down", retry_after=10.0)
    pauses["fhir"].trip("down", retry_after=5.0)
    assert pauses.until(["fhir", "source:a"]) == pytest.approx(10.0, abs=2.0)
    assert pauses.until(["state"]) is None and pauses.any_active(["fhir"])
    now[0] = 12.0  # past both Retry-Afters
    pauses.clear(["fhir", "source:a"])
    assert not pauses.any_active(pauses)


def test_a_repeated_5xx_is_the_studys_own_once_the_server_answered_others() -> None:
    paused = decide(FhirUnavailable("HTTP 503", outage=True, status=503), task(), POLICY, now=0)
    waits = repeated_outage(paused, task(0), POLICY, answered_since=False, now=100.0,
                            jitter=NO_JITTER)  # fmt: skip
    assert (waits.kind, waits.dependency, waits.retry_at) == (Kind.PAUSED, "fhir", 105.0)
    own = repeated_outage(paused, task(1), POLICY, answered_since=True, now=100.0,
                          jitter=NO_JITTER)  # fmt: skip
    assert (own.kind, own.retry_at, own.status) == (Kind.RETRY, 110.0, 503)
    last = repeated_outage(paused, task(2), POLICY, answered_since=True, now=100.0)
    assert (last.kind, last.dependency) == (Kind.PARKED, None)


class Clock:
    """Time as the test says it is."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_only_an_answer_to_a_request_sent_after_the_pause_clears_it() -> None:
    clock = Clock()
    pause = Pause("fhir", 1.0, 60.0, clock=clock, jitter=NO_JITTER)
    sent_before = clock.now  # another thread's request, out before the outage was seen
    clock.now += 0.1
    pause.trip("HTTP 503")
    clock.now += 0.2
    assert not pause.clear(sent_at=sent_before)  # its answer says nothing of the server since
    assert pause.active() and pause.reason == "HTTP 503"
    assert pause.clear(sent_at=clock.now)  # a request sent during the pause was answered
    assert not pause.active()


def test_a_retry_after_holds_the_pause_against_any_answer_until_it_has_passed() -> None:
    clock = Clock()
    pauses = Pauses(["fhir"], 1.0, 60.0, clock=clock, jitter=NO_JITTER)
    pauses["fhir"].trip("HTTP 429", retry_after=5.0)
    for step in (0.5, 2.0, 4.9):
        clock.now = 1000.0 + step
        pauses.clear(["fhir"], sent_at=clock.now)  # even a fresh request's answer
        assert pauses.any_active(["fhir"]), step
    clock.now = 1005.0
    pauses.clear(["fhir"], sent_at=clock.now)
    assert not pauses.any_active(["fhir"]) and pauses.until(["fhir"]) is None


def test_a_listing_marks_a_study_whose_patient_identity_changed_at_the_same_count() -> None:
    synced = KnownStudy("synced", 3, 3, identity="a")
    assert not _changed(synced, 3, "a")
    assert _changed(synced, 3, "b")  # a correction in place keeps the count
    assert _changed(KnownStudy("synced", 3, 3), 3, "a")  # none listed yet: read once
    parked = KnownStudy("failed", 3, 3, identity="a")
    assert not _changed(parked, 3, "a") and _changed(parked, 3, "b")
    assert not _changed(KnownStudy("failed", 3, 3), 3, "a")  # parked stays parked
    assert not _changed(KnownStudy("synced", 3, 3), 3)  # sources without identities
