"""Source leases: exactly one worker tails each source's feed; the others only sync.

A lease is a row in the state DB renewed every third of its length; a worker that dies
loses it when it runs out, and another takes over. `run --once` and a clean stop hand the
leases back at once, so `cursor set` and the next worker need not wait.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterable
from typing import Protocol

from dicomcast.errors import ConfigError, StateUnavailable

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


def process_name() -> str:
    """This process, as the workers table names it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Heard(Protocol):
    def last_heard(self, owner: str) -> tuple[str | None, float] | None: ...


def refuse_a_twin(
    store: Heard, owner: str, instance: str, lease: float, now: float | None = None
) -> None:
    """Refuse to start under a worker name another live process uses (two workers with
    the default WORKER_ID, the host name, on one machine both believed they held the
    feed). A process of this host that is gone is a crash being restarted: not a twin."""
    heard = store.last_heard(owner)
    if heard is None:
        return
    other, at = heard
    if other is None or other == instance:
        return
    age = (time.time() if now is None else now) - at
    if age > lease:
        return
    host, _, pid = other.rpartition(":")
    if host == instance.rpartition(":")[0] and not _alive(pid):
        return
    raise ConfigError(
        f"another worker runs as DICOMCAST_WORKER_ID={owner} on this state database "
        f"({other}, heard {age:.0f} s ago): give each worker its own DICOMCAST_WORKER_ID"
    )


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
