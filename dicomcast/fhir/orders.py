"""ImagingStudy.basedOn: the order (ServiceRequest) of the study's accession number.

The mapping gives a logical reference (type ServiceRequest + the accession identifier).
With `based_on=resolve` it becomes a literal one when the FHIR server holds exactly one
ServiceRequest with that identifier (one search per study; hits are cached). References
an order system wrote are kept: ours is added beside them, never in their place.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from dicomcast.errors import MappingError
from dicomcast.mapping.mapper import search_token
from dicomcast.model import BasedOnPolicy

_CACHE = 10_000  # accession token -> ServiceRequest id


def _key(reference: dict[str, Any]) -> tuple[Any, Any] | None:
    identifier = reference.get("identifier")
    if not isinstance(identifier, dict):
        return None
    return identifier.get("system"), identifier.get("value")


def _same(ours: dict[str, Any], theirs: Any) -> bool:
    if not isinstance(theirs, dict):
        return False
    if ours.get("reference") and ours.get("reference") == theirs.get("reference"):
        return True
    return _key(ours) is not None and _key(ours) == _key(theirs)


def combined(ours: list[dict[str, Any]], existing: list[Any]) -> list[Any]:
    """The server's basedOn with ours added; a logical entry of ours on the server is
    replaced by its literal form once resolved."""
    merged = list(existing)
    for reference in ours:
        index = next((i for i, r in enumerate(merged) if _same(reference, r)), None)
        if index is None:
            merged.append(reference)
        elif reference.get("reference") and not merged[index].get("reference"):
            merged[index] = reference
    return merged


class Orders:
    """Turns the mapping's logical order references into what is written."""

    def __init__(self, mode: BasedOnPolicy, search: Callable[[str], list[dict[str, Any]]]) -> None:
        self.mode = mode
        self._search = search
        self._found: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def queries(self, study: dict[str, Any]) -> list[str]:
        """The searches `apply` would make for this study: the writer sends them in the
        same batch as its Patient and ImagingStudy searches."""
        if self.mode != "resolve":
            return []
        queries = []
        for reference in study.get("basedOn") or []:
            token = self._token(reference) if isinstance(reference, dict) else None
            with self._lock:
                known = token in self._found
            if token and not known:
                queries.append(f"ServiceRequest?identifier={token}")
        return queries

    def ours(
        self, study: dict[str, Any], answers: Mapping[str, list[dict[str, Any]]]
    ) -> list[dict[str, Any]]:
        """The basedOn entries this study should carry (resolved when asked to)."""
        wanted = [r for r in study.get("basedOn") or [] if isinstance(r, dict)]
        if self.mode == "off" or not wanted:
            return []
        if self.mode == "resolve":
            wanted = [self._resolved(r, answers) for r in wanted]
        return wanted

    @staticmethod
    def _token(reference: dict[str, Any]) -> str | None:
        identifier = reference.get("identifier")
        if reference.get("reference") or not isinstance(identifier, dict):
            return None
        try:
            return search_token({"identifier": [identifier]})
        except MappingError:  # no system or value: stays logical
            return None

    def _resolved(
        self, reference: dict[str, Any], answers: Mapping[str, list[dict[str, Any]]]
    ) -> dict[str, Any]:
        token = self._token(reference)
        if token is None:
            return reference
        with self._lock:
            found = self._found.get(token)
        if found is None:
            query = f"ServiceRequest?identifier={token}"
            matches = answers[query] if query in answers else self._search(query)
            if len(matches) != 1 or not matches[0].get("id"):
                return reference  # none yet, or ambiguous: the logical form says enough
            found = str(matches[0]["id"])
            with self._lock:
                self._found[token] = found
                while len(self._found) > _CACHE:
                    self._found.popitem(last=False)
        return {**reference, "reference": f"ServiceRequest/{found}"}

    def apply(
        self,
        study: dict[str, Any],
        current: dict[str, Any] | None,
        answers: Mapping[str, list[dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        """`study` with basedOn = the server's entries plus ours; `answers` are the
        searches of `queries` already made (others are made here)."""
        existing = (current or {}).get("basedOn") or []
        merged = combined(self.ours(study, answers or {}), existing)
        out = {k: v for k, v in study.items() if k != "basedOn"}
        if merged:
            out["basedOn"] = merged
        return out
