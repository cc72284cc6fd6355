"""Send a study's entries the way the server can take them: one transaction, several in
order (past its size limit), batches or single requests in dependency order.

Entries are built as for a transaction (conditional creates, `If-Match`, `urn:uuid:`
references between them); here they are fitted to the `WriteMode`. Outside a transaction
an entry that points at another waits until that one is written and its id known. Every
answer comes back in entry order, as a transaction-response entry would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

from dicomcast.errors import FhirConflict, FhirRejected, RetriableError
from dicomcast.fhir.capabilities import WriteMode, learnt
from dicomcast.fhir.client import FhirClient
from dicomcast.fhir.entries import created_id, proven, references, replace_refs, update_entry

log = logging.getLogger(__name__)
Entry = dict[str, Any]
Guard = Callable[[str], AbstractContextManager[bool]]


@contextlib.contextmanager
def unguarded(_key: str) -> Iterator[bool]:
    yield True


class Writes:
    """The write path of one FHIR server. The mode is found once, on first use (a run
    that writes nothing never asks; a server down at start-up is an outage of the first
    write, not a failed start). A failed attempt is remembered for `RETRY_MODE` seconds:
    the other sync threads fail with it instead of each asking the server again."""

    RETRY_MODE = 5.0

    def __init__(
        self, client: FhirClient, find_mode: Callable[[], WriteMode], guard: Guard = unguarded
    ) -> None:
        self.client = client
        self._find_mode = find_mode
        self.guard = guard
        self._mode: WriteMode | None = None
        self._failed: tuple[float, RetriableError] | None = None  # (until, what failed)
        self._lock = threading.Lock()
        self._target: Entry | None = None  # what If-Match is learnt on
        self._probe_lock = threading.Lock()

    def mode(self) -> WriteMode:
        if self._mode is None:
            with self._lock:
                if self._mode is None:
                    mode = self._first_mode()
                    log.info("FHIR writes: %s", mode.describe())
                    if mode.missing:
                        log.warning(
                            "the FHIR server does not list interactions dicomcast uses: %s",
                            ", ".join(mode.missing),
                        )
                    self._mode = mode
        if self._mode.probe_if_match and self._target is not None:
            self._settle_if_match()  # until learnt (a server down meanwhile: next time)
        return self._mode

    def _first_mode(self) -> WriteMode:
        """Ask (under the lock), unless the last asking failed moments ago."""
        if self._failed is not None and time.monotonic() < self._failed[0]:
            failed = self._failed[1]
            raise type(failed)(
                str(failed), outage=failed.outage, status=failed.status, detail=failed.detail
            )
        try:
            return self._find_mode()
        except RetriableError as exc:
            self._failed = (time.monotonic() + self.RETRY_MODE, exc)
            raise

    def if_match_target(self, resource: Entry) -> None:
        """dicomcast's own Endpoint as the server holds it: what `If-Match` is learnt on,
        where the CapabilityStatement does not say whether it is enforced (Medplum
        declares `versioned` and enforces it). Learnt when the mode is known (a run that
        writes nothing never asks); until then If-Match is sent."""
        self._target = resource
        if self._mode is not None:
            self._settle_if_match()

    def _settle_if_match(self) -> None:
        """An update of the target naming a stale version (its content unchanged) is
        refused (412) where If-Match is enforced. One probe at a time; meanwhile (and in
        the probe's own write) writes go out as the mode says, If-Match on."""
        if not self._probe_lock.acquire(blocking=False):
            return
        try:
            mode, resource = self._mode, self._target
            if mode is None or not mode.probe_if_match or resource is None:
                return
            version = str((resource.get("meta") or {}).get("versionId") or "")
            stale = (
                str(int(version) - 1)
                if version.isascii() and version.isdigit() and int(version) > 1
                else "0"
            )
            entry = update_entry(resource, {**resource, "meta": {"versionId": stale}})
            enforced = True  # what an answer that proves nothing leaves: If-Match is sent
            for _ in range(2):  # an empty answer makes the client ask for whole ones: again
                try:
                    (answer,) = self.send([entry])
                except FhirConflict:
                    break
                except FhirRejected:
                    enforced = False  # it refuses If-Match itself: it cannot keep updates apart
                    break
                if proven(answer):
                    enforced = False
                    break
            with self._lock:
                self._mode = learnt(mode, enforced)
            log.info("FHIR writes: %s", self._mode.describe())
        finally:
            self._probe_lock.release()

    @contextlib.contextmanager
    def guarded(self, key: str) -> Iterator[None]:
        """Our lock on an identifier (`guard`, e.g. a Patient's) while it is read and
        written. Taken in every mode: a conditional create outside a transaction (and
        inside one, on a server that does not run them atomically) can make twins."""
        with self.guard(key) as held:
            if not held:
                raise FhirConflict(f"another writer kept the lock of {key.split()[0]}")
            yield

    def send(self, entries: list[Entry]) -> list[Entry]:
        """Write `entries`; the answers in the same order. A failed entry raises.

        A Bundle the server finds too large (413) halves the size sent from then on, and
        is a conflict: the caller re-reads (part of it may be stored) and writes again."""
        mode = self.mode()
        fitted = [_fit(entry, mode) for entry in entries]
        try:
            if mode.bundle == "transaction":
                return self._transactions(fitted, mode.max_entries)
            return self._in_order(fitted, mode)
        except FhirRejected as exc:
            if exc.status != 413 or mode.max_entries < 2 or len(entries) < 2:
                raise
            size = max(1, min(mode.max_entries, len(entries)) // 2)
            with self._lock:
                self._mode = dataclasses.replace(mode, max_entries=size)
            log.warning("the FHIR server refused a Bundle as too large; sending %d entries", size)
            raise FhirConflict("Bundle too large for the server: sent smaller") from None

    def _transactions(self, entries: list[Entry], size: int) -> list[Entry]:
        """One transaction, or several in order, each later one pointing at the ids the
        earlier ones created."""
        if len(entries) <= size:
            return self.client.transaction(entries)
        responses: list[Entry] = []
        pending = list(entries)
        while pending:
            chunk, pending = pending[:size], pending[size:]
            answered = self.client.transaction(chunk)
            responses.extend(answered)
            pending = _resolved(chunk, answered, pending)
        return responses

    def _in_order(self, entries: list[Entry], mode: WriteMode) -> list[Entry]:
        """Batches (or single requests) of the entries whose references are all known,
        until none is left."""
        answers: dict[int, Entry] = {}
        pending = list(enumerate(entries))
        while pending:
            waiting = {e["fullUrl"] for _, e in pending if e.get("fullUrl")}
            ready = [(n, e) for n, e in pending if not references(e.get("resource")) & waiting]
            if not ready:  # a cycle: never built by dicomcast's mappings
                raise FhirConflict("entries refer to each other in a cycle")
            sent_now = {n for n, _ in ready}
            pending = [(n, e) for n, e in pending if n not in sent_now]
            for start in range(0, len(ready), mode.max_entries):
                part = ready[start : start + mode.max_entries]
                sent = [e for _, e in part]
                if mode.bundle == "batch":
                    answered = self.client.batch(sent)
                else:
                    answered = [self.client.entry_request(e) for e in sent]
                answers.update((n, a) for (n, _), a in zip(part, answered, strict=True))
                later = _resolved(sent, answered, [e for _, e in pending])
                pending = [(n, e) for (n, _), e in zip(pending, later, strict=True)]
        return [answers[n] for n in range(len(entries))]


def _resolved(sent: list[Entry], answered: list[Entry], pending: list[Entry]) -> list[Entry]:
    """`pending` with references to what `sent` created pointing at the created ids."""
    for entry, response in zip(sent, answered, strict=False):
        full_url = entry.get("fullUrl")
        if not full_url:
            continue
        resource_id, _ = created_id(response)
        if not resource_id:
            if any(full_url in references(e.get("resource")) for e in pending):
                # Stored, but the server did not say where (an empty answer): the next
                # attempt finds it by identifier and writes the rest.
                raise FhirConflict("the server did not say where it wrote an entry")
            continue
        target = f"{entry['resource']['resourceType']}/{resource_id}"
        pending = [replace_refs(e, full_url, target) for e in pending]
    return pending


def _fit(entry: Entry, mode: WriteMode) -> Entry:
    """The entry without what the server does not support (the caller holds the lock that
    stands in for it)."""
    request = entry.get("request") or {}
    drop = [
        name
        for name, used in (("ifNoneExist", mode.conditional_create), ("ifMatch", mode.if_match))
        if not used and name in request
    ]
    if not drop:
        return entry
    return {**entry, "request": {k: v for k, v in request.items() if k not in drop}}
