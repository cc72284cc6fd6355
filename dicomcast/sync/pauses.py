"""Server-wide pauses after an outage: one per dependency (`fhir`, `state`, `source:<name>`).

While a server is paused, no study that needs it is tried and none spends an attempt; the
pause grows exponentially while the outage lasts and clears the moment the server answers.
Pauses live in memory: a restarted worker simply tries once and pauses again if need be.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from dicomcast.sync.policy import Jitter, backoff, uniform

log = logging.getLogger(__name__)
Clock = Callable[[], float]


class Pause:
    """A pause of one server: from `base` to `cap`, never shorter than its Retry-After.
    Several studies failing at once during one pause count as one step of the backoff."""

    def __init__(
        self,
        name: str,
        base: float,
        cap: float,
        *,
        clock: Clock = time.time,
        jitter: Jitter = uniform,
    ) -> None:
        self.name = name
        self.base = base
        self.cap = cap
        self.until = 0.0
        self.streak = 0
        self.reason: str | None = None
        self.kind: str | None = None  # the class of failure, for health endpoints
        self.answered_at = 0.0  # when the server last answered (a pause cleared)
        self.since = 0.0  # when the current pause began
        self.floor = 0.0  # no answer clears it before this (the server's Retry-After)
        self._clock = clock
        self._jitter = jitter
        self._lock = threading.Lock()

    def active(self, now: float | None = None) -> bool:
        return (self._clock() if now is None else now) < self.until

    def trip(
        self,
        reason: str,
        retry_after: float | None = None,
        now: float | None = None,
        *,
        kind: str | None = None,
    ) -> float:
        """Pause (or extend the pause); returns when it ends. `reason` is logged (it carries
        no patient data); `kind` (e.g. `FhirUnavailable HTTP 503`) is what health shows."""
        now = self._clock() if now is None else now
        with self._lock:
            if now >= self.until:
                self.streak += 1
            if self.reason is None:
                self.since = now
            self.floor = max(self.floor, now + (retry_after or 0.0))
            delay = backoff(
                self.streak, self.base, self.cap, retry_after=retry_after, jitter=self._jitter
            )
            first = self.reason is None
            self.until = max(self.until, now + delay)
            self.reason = reason
            self.kind = kind or "unavailable"
        if first:
            log.warning(
                "%s unavailable, pausing: %s", self.name, reason, extra={"dependency": self.name}
            )
        return self.until

    def clear(self, sent_at: float | None = None) -> bool:
        """The server answered a request sent at `sent_at`: end the pause, unless that
        request was sent before the pause began (its answer says nothing of the server
        since), or the server's Retry-After has not passed. True when no pause is left."""
        now = self._clock()
        with self._lock:
            if self.reason is not None and (
                (sent_at is not None and sent_at < self.since) or now < self.floor
            ):
                return False
            self.answered_at = now
            was = self.reason
            self.until, self.streak, self.reason, self.kind = 0.0, 0, None, None
            self.floor = 0.0
        if was is not None:
            log.warning("%s is back; resuming", self.name, extra={"dependency": self.name})
        return True


class Pauses(Mapping[str, Pause]):
    """Every dependency's pause, by name."""

    def __init__(
        self,
        names: Iterable[str],
        base: float,
        cap: float,
        *,
        clock: Clock = time.time,
        jitter: Jitter = uniform,
    ) -> None:
        self._clock = clock
        self._pauses = {n: Pause(n, base, cap, clock=clock, jitter=jitter) for n in names}

    def __getitem__(self, name: str) -> Pause:
        return self._pauses[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._pauses)

    def __len__(self) -> int:
        return len(self._pauses)

    def until(self, names: Iterable[str]) -> float | None:
        """When the longest active pause among `names` ends; None when none is active."""
        now = self._clock()
        ends = [self._pauses[n].until for n in names if self._pauses[n].active(now)]
        return max(ends) if ends else None

    def any_active(self, names: Iterable[str]) -> bool:
        now = self._clock()
        return any(self._pauses[n].active(now) for n in names)

    def clear(self, names: Iterable[str], sent_at: float | None = None) -> None:
        """The named servers answered requests sent at or after `sent_at`."""
        for name in names:
            pause = self._pauses.get(name)
            if pause is not None:
                pause.clear(sent_at)
