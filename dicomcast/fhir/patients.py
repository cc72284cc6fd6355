"""A Patient (or any resource) found by identifier, and how dicomcast's Patient meets one
the server holds already (often the EHR's own): identifiers added, the rest by policy."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from dicomcast.errors import MappingError
from dicomcast.mapping.mapper import content_hash, search_token
from dicomcast.model import PatientPolicy


def identifier_words(token: str) -> str:
    """A match key as logs may show it: its system and a hash of its value (a Patient's
    value is an MRN). The key itself goes in an error's `detail`."""
    plain = unquote(token)
    digest = hashlib.sha256(plain.encode()).hexdigest()[:12]
    return f"identifier of system {plain.split('|', 1)[0]} (value hash {digest})"


def single(matches: list[dict[str, Any]], what: str, token: str) -> dict[str, Any] | None:
    if len(matches) > 1:
        raise MappingError(
            f"{len(matches)} {what} resources match one {identifier_words(token)}; refusing to "
            "guess which one is right (merge them on the FHIR server, then retry)",
            detail=f"identifier {unquote(token)}",
        )
    return matches[0] if matches else None


def _merge_identifiers(current: list[Any], desired: list[Any]) -> list[Any]:
    seen = {(i.get("system"), i.get("value")) for i in current if isinstance(i, dict)}
    extra = [i for i in desired if (i.get("system"), i.get("value")) not in seen]
    return current + extra


def merge_patient(
    current: dict[str, Any], desired: dict[str, Any], owned: frozenset[str], policy: PatientPolicy
) -> dict[str, Any]:
    """The Patient to write, given the one the server has (often the EHR's own)."""
    if policy == "never":
        return current
    merged = dict(current)
    for name in owned:
        if name not in desired:
            continue
        if name == "identifier":
            merged[name] = _merge_identifiers(current.get(name, []), desired[name])
        elif policy == "overwrite" or name not in current:
            merged[name] = desired[name]
    return merged


class KnownPatients:
    """Patients this process reconciled and read back with a study: identifier -> (their
    content, their id), the most recent `size`. A new study of a known Patient, answered
    "exists" at the id known, needs no read: its policy was applied, and the server was
    seen to link a study to it."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._known: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def id_of(self, patient: Mapping[str, Any]) -> str | None:
        """The id of this Patient when it is known with exactly this content."""
        with self._lock:
            known = self._known.get(search_token(patient))
        return known[1] if known and known[0] == content_hash(patient) else None

    def remember(self, patient: Mapping[str, Any], patient_id: str | None) -> None:
        if not patient_id:
            return
        token = search_token(patient)
        with self._lock:
            self._known[token] = (content_hash(patient), patient_id)
            self._known.move_to_end(token)
            if len(self._known) > self.size:
                self._known.popitem(last=False)
