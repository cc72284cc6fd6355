"""The failure policy, as pure functions: whose failure is it, and when to try again.

- A study's own deterministic failure (`StudyError`: a refusal, unmappable data) parks it.
- A study's own transient failure (a 500, a conflict that repeats) retries it with
  exponential backoff, and parks it after `max_attempts`.
- An outage (a server unreachable, throttling, refusing our credentials; the state DB
  failing) is nobody's study's: the server's pause decides when to try, and no attempt is
  spent, so an hour-long outage parks nothing.
- Anything else is a bug of ours: parked as `InternalError`, never retried in a loop.

No clock, randomness or I/O of its own: `now` and `jitter` come in, so tests need no sleep.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from dicomcast.errors import RetriableError, SourceUnavailable, StateUnavailable, StudyError
from dicomcast.model import Kind, Outcome, StudyTask, source_dependency

Jitter = Callable[[float, float], float]
JITTER = (0.8, 1.2)  # each delay is spread by +-20% so retries of many studies do not align


def uniform(low: float, high: float) -> float:
    """The default jitter source (not for secrets: it only spreads retries)."""
    return random.uniform(low, high)  # noqa: S311


def backoff(
    step: int,
    base: float,
    cap: float,
    *,
    retry_after: float | None = None,
    jitter: Jitter = uniform,
) -> float:
    """Seconds to wait before try `step + 1`: `base * 2^(step-1)` up to `cap`, jittered,
    never shorter than a server's Retry-After."""
    delay: float = min(cap, base * 2.0 ** max(0, step - 1))
    return max(delay * jitter(*JITTER), retry_after or 0.0)


@dataclass(frozen=True)
class FailurePolicy:
    """How a study's own transient failures are retried before it is parked."""

    max_attempts: int = 10
    backoff_base: float = 5.0
    backoff_max: float = 600.0


def dependency_of(exc: RetriableError, source: str) -> str:
    """The server an outage belongs to: the study's source, the state DB, or FHIR."""
    if isinstance(exc, StateUnavailable):
        return "state"
    if isinstance(exc, SourceUnavailable):
        return source_dependency(source)
    return "fhir"


def decide(
    exc: Exception,
    task: StudyTask,
    policy: FailurePolicy,
    *,
    now: float,
    jitter: Jitter = uniform,
) -> Outcome:
    """The outcome of an attempt that raised `exc`."""
    name = type(exc).__name__
    status = getattr(exc, "status", None)
    detail = getattr(exc, "detail", "") or None
    if isinstance(exc, StudyError):
        return Outcome(Kind.PARKED, reason=str(exc), detail=detail, error_kind=name, status=status)
    if isinstance(exc, RetriableError):
        failed = Outcome(
            Kind.PAUSED,
            reason=str(exc),
            detail=detail,
            error_kind=name,
            status=status,
            retry_after=exc.retry_after,
            dependency=dependency_of(exc, task.source),
        )
        if exc.outage or isinstance(exc, StateUnavailable):
            return failed
        return _spend_attempt(failed, task, policy, now=now, jitter=jitter)
    # Our own bug: its message may quote any value, so it is detail, not reason.
    return Outcome(
        Kind.PARKED, reason=f"internal error: {name}", detail=str(exc), error_kind="InternalError"
    )


def _spend_attempt(
    failed: Outcome, task: StudyTask, policy: FailurePolicy, *, now: float, jitter: Jitter
) -> Outcome:
    """The study's own transient failure: retried with backoff, parked at `max_attempts`."""
    attempts = task.attempts + 1
    if attempts >= policy.max_attempts:
        return replace(failed, kind=Kind.PARKED, dependency=None, retry_at=None, retry_after=None)
    delay = backoff(
        attempts,
        policy.backoff_base,
        policy.backoff_max,
        retry_after=failed.retry_after,
        jitter=jitter,
    )
    return replace(failed, kind=Kind.RETRY, dependency=None, retry_at=now + delay, retry_after=None)


def repeated_outage(
    outcome: Outcome,
    task: StudyTask,
    policy: FailurePolicy,
    *,
    answered_since: bool,
    now: float,
    jitter: Jitter = uniform,
) -> Outcome:
    """A study meets the same 5xx it failed with last time. If its server has answered
    others since, the failure is this study's own: retried with backoff and parked after
    `max_attempts` like any other. If not, it is not yet clear whose it is: the server is
    paused as for any outage, but this study comes back only a backoff *after* the pause,
    so that others are tried first; if they fail too, the outage is real, and if they
    succeed, its next failure is its own. So one study that always gets a 503 cannot keep
    every other study waiting. (For a pause, `retry_at` is that extra wait after it.)"""
    if answered_since:
        return _spend_attempt(outcome, task, policy, now=now, jitter=jitter)
    delay = backoff(
        1, policy.backoff_base, policy.backoff_max, retry_after=outcome.retry_after, jitter=jitter
    )
    return replace(outcome, retry_at=now + delay)
