"""The pace of backfills: how many of a backfill's studies the next sync round may take.

Live changes are always claimed first and in full. A backfill's studies fill in behind
them, a few per round (so a live change arriving meanwhile waits one short round at most),
and no faster than the run's limits: studies per second, and FHIR requests per second
counted over everything this worker sends (a backfill yields to live traffic, never the
other way round). Limits are for the whole deployment: each worker takes an even share,
by the number of workers the state DB has seen polling lately.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from dicomcast.state.backfills import Limits


class BackfillPace:
    def __init__(self, per_round: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_round = per_round
        self.clock = clock
        self.limits: dict[str, Limits] = {}
        self._studies: dict[str, float] = {}  # token buckets, one per source
        self._requests = 0.0  # one bucket for the FHIR requests of the whole worker
        self._requests_seen: int | None = None
        self._requests_at = clock()
        self._at: dict[str, float] = {}

    def update(self, limits: Mapping[str, Limits], workers: int = 1) -> None:
        """The running backfills' limits, as the state DB has them now, and how many
        workers share them."""
        share = max(1, workers)
        self.limits = {
            name: Limits(
                None if limit.studies is None else limit.studies / share,
                None if limit.requests is None else limit.requests / share,
            )
            for name, limit in limits.items()
        }

    def running(self, source: str) -> bool:
        return source in self.limits

    def admit(self, source: str, requests_sent: int) -> int:
        """How many backfill studies of `source` may be claimed now; `requests_sent` is
        the worker's count of FHIR requests so far."""
        limits = self.limits.get(source)
        if limits is None:
            return 0
        now = self.clock()
        allowed = self.per_round
        rates = [v.requests for v in self.limits.values() if v.requests is not None]
        if rates:
            rate = min(rates)
            if self._requests_seen is None:  # the first look: a second's worth to start
                self._requests = rate
            seen = requests_sent if self._requests_seen is None else self._requests_seen
            elapsed, self._requests_at = max(0.0, now - self._requests_at), now
            self._requests_seen = requests_sent
            self._requests = min(rate, self._requests + rate * elapsed - (requests_sent - seen))
            if self._requests <= 0:
                return 0
        if limits.studies is not None:
            elapsed, self._at[source] = max(0.0, now - self._at.get(source, now)), now
            tokens = min(
                max(1.0, limits.studies), self._studies.get(source, 1.0) + limits.studies * elapsed
            )
            self._studies[source] = tokens
            allowed = min(allowed, math.floor(tokens))
        return max(0, allowed)

    def spend(self, source: str, studies: int) -> None:
        """`studies` backfill studies were claimed."""
        if source in self._studies:
            self._studies[source] -= studies
