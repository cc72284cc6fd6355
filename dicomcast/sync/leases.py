"""Source leases: exactly one worker tails each source's feed; the others only sync.

A lease is a row in the state DB renewed every third of its length; a worker that dies
loses it when it runs out, and another takes over. `run --once` and a clean stop hand the
leases back at once, so `cursor set` and the next worker need not wait.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from dicomcast.errors import StateUnavailable

log = logging.getLogger(__name__)


class LeaseTable(Protocol):
    def acquire_source(self, name: str, owner: str, lease: float) -> bool: ...

    def release_source(self, name: str, owner: str) -> None: ...


class SourceLeases:
    """Which of the configured sources this worker tails now."""

    def __init__(self, table: LeaseTable, owner: str, names: Iterable[str], seconds: float) -> None:
        self.table = table
        self.owner = owner
        self.seconds = seconds
        self.tailing = dict.fromkeys(names, False)

    def held(self, name: str) -> bool:
        return self.tailing[name]

    def hold(self) -> bool:
        """Take or renew every source's lease; True when this worker tails at least one."""
        for name in self.tailing:
            held = self.table.acquire_source(name, self.owner, self.seconds)
            if held != self.tailing[name]:
                log.info(
                    "this worker %s the change feed",
                    "tails" if held else "does not tail (another worker holds it)",
                    extra={"source": name, "owner": self.owner},
                )
            self.tailing[name] = held
        return any(self.tailing.values())

    def let_go(self) -> None:
        """Hand every lease back (a state DB failure here only delays the next holder)."""
        for name in self.tailing:
            try:
                self.table.release_source(name, self.owner)
            except StateUnavailable as exc:
                log.warning("could not release the source lease: %s", exc, extra={"source": name})
            self.tailing[name] = False
