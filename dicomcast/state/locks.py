"""Study locks: one study's FHIR write at a time, across threads and across workers.

Claims keep one source's copy of a study with one worker, but two sources (or two keys of
one source) may hold the same study, and a FHIR server's conditional create need not be
atomic: two writers at once can make two resources. So every write takes the lock of the
study's match key. In one process a striped `threading.Lock` does; on PostgreSQL a
session advisory lock (`pg_try_advisory_lock`) extends it to every worker sharing the
state DB. The server drops an advisory lock with its connection, so a killed worker never
leaves a study locked.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
import zlib
from collections.abc import Iterator

from sqlalchemy import Connection, text

from dicomcast.state.db import Database, translated

LOCK_SPACE = 0x6463_6D73  # the first key of our two-key advisory locks ("dcms")
PATIENT_SPACE = 0x6463_6D70  # Patients' locks ("dcmp"), taken inside a study's, never around
STRIPES = 64


def lock_key(match: str) -> int:
    """The second advisory-lock key of a study: 32 signed bits of its match key's hash."""
    return int.from_bytes(hashlib.blake2b(match.encode(), digest_size=4).digest(), signed=True)


class StudyLocks:
    """Hold a study's lock while it is written; `hold` yields False when another writer
    kept it for longer than `wait` seconds (the caller looks again later)."""

    def __init__(
        self,
        db: Database | None,
        *,
        wait: float = 10.0,
        poll: float = 0.05,
        space: int = LOCK_SPACE,
    ) -> None:
        self.shared = db if db is not None and db.dialect == "postgresql" else None
        self.space = space
        self.wait = wait
        self.poll = poll
        self._stripes = [threading.Lock() for _ in range(STRIPES)]

    @contextlib.contextmanager
    def hold(self, match: str) -> Iterator[bool]:
        stripe = self._stripes[zlib.crc32(match.encode()) % STRIPES]
        deadline = time.monotonic() + self.wait
        if not stripe.acquire(timeout=self.wait):
            yield False
            return
        try:
            if self.shared is None:
                yield True
                return
            with self._advisory(lock_key(match), deadline) as held:
                yield held
        finally:
            stripe.release()

    @contextlib.contextmanager
    def _advisory(self, key: int, deadline: float) -> Iterator[bool]:
        assert self.shared is not None
        with translated("study lock"), self.shared.engine.connect() as connection:
            held = _try_lock(connection, self.space, key)
            while not held and time.monotonic() < deadline:
                time.sleep(self.poll)
                held = _try_lock(connection, self.space, key)
            try:
                yield held
            finally:
                if held:
                    with contextlib.suppress(Exception):  # a lost connection dropped it anyway
                        connection.execute(
                            text("SELECT pg_advisory_unlock(:space, :key)"),
                            {"space": self.space, "key": key},
                        )
                        connection.commit()


def _try_lock(connection: Connection, space: int, key: int) -> bool:
    held = connection.execute(
        text("SELECT pg_try_advisory_lock(:space, :key)"), {"space": space, "key": key}
    ).scalar()
    connection.commit()  # no transaction stays open while the study is written
    return bool(held)
