"""Several sources, one ImagingStudy: each source's part is kept, their union is written.

The one write to the state DB made during a sync lives here, and it is deliberate: a
source's part must be durable *before* its FHIR write, so that a sync of the same study
from another source (in this worker or another) that re-reads after a conflict composes
the union with this part in it. Recorded after the write, a part could be lost between two
workers' writes. Everything else a sync learns goes back to the worker as its `Outcome`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from dicomcast.errors import FhirConflict
from dicomcast.fhir.entries import replace_refs
from dicomcast.mapping.mapper import MappedStudy, search_token
from dicomcast.mapping.union import Part, union
from dicomcast.model import Contribution

Compose = Callable[[], dict[str, Any]]


class PartStore(Protocol):
    def put_contribution(
        self, source: str, key: str, match_key: str, body: dict[str, Any]
    ) -> None: ...

    def contributions(self, match_key: str) -> list[Contribution]: ...

    def drop_contribution(self, source: str, key: str) -> str | None: ...


class MultiSource:
    """The parts of studies that several configured sources may hold (`enabled` only when
    more than one source is configured; a single source writes its own mapping as it is)."""

    def __init__(self, store: PartStore, sources: Sequence[str]) -> None:
        self.store = store
        self.priority = {name: rank for rank, name in enumerate(sources)}
        self.enabled = len(self.priority) > 1

    def parts(self, match: str) -> list[Contribution]:
        """The configured sources' parts of a study, highest priority first."""
        parts = [c for c in self.store.contributions(match) if c.source in self.priority]
        return sorted(parts, key=lambda c: (self.priority[c.source], c.study_key))

    def desired(self, match: str, subject: Any) -> dict[str, Any]:
        """The ImagingStudy holding every part stored now."""
        return _union_of(self.parts(match), subject)

    def keep(
        self, source: str, key: str, match: str, mapped: MappedStudy, endpoint: str | None
    ) -> tuple[MappedStudy, Compose, bool]:
        """Store this source's part; returns the study to write (the union), how to compose
        it again after a re-read, and whether another source holds the study too (it then
        exists on the FHIR server: no blind create)."""
        part = {
            "patient": mapped.patient,
            "study": mapped.imaging_study,
            "placeholder": mapped.patient_placeholder,
            "endpoint": endpoint,
            "observations": list(mapped.observations),
            "study_placeholder": mapped.study_placeholder,
        }
        self.store.put_contribution(source, key, match, part)
        subject = mapped.imaging_study.get("subject")
        parts = self.parts(match)
        whole = MappedStudy(
            mapped.study_uid,
            mapped.patient,
            _union_of(parts, subject),
            mapped.patient_placeholder,
            mapped.warnings,
            _observations_of(parts, mapped.patient_placeholder),
            mapped.study_placeholder,
        )
        return whole, lambda: self.desired(match, subject), len(parts) > 1

    def drop(self, source: str, key: str) -> str | None:
        """Forget a source's part; returns the study's match key, if it had one."""
        return self.store.drop_contribution(source, key)

    def remaining(self, study_uid: str | None, match: str) -> tuple[MappedStudy, Compose] | None:
        """What the other sources still hold of a study; None when nothing is left."""
        parts = self.parts(match)
        if not parts:
            return None
        first = parts[0].body
        subject = first["study"].get("subject")
        study = MappedStudy(
            study_uid or "",
            first["patient"],
            _union_of(parts, subject),
            first["placeholder"],
            (),
            _observations_of(parts, first["placeholder"]),
            first.get("study_placeholder"),
        )
        return study, lambda: self.desired(match, subject)


def _observations_of(parts: list[Contribution], placeholder: str) -> tuple[dict[str, Any], ...]:
    """Every part's dose Observations, one per report (the highest-priority part's copy),
    each pointing at the Patient being written."""
    seen: dict[str, dict[str, Any]] = {}
    for part in parts:
        for observation in part.body.get("observations") or []:
            token = search_token(observation)
            if token not in seen:
                own = str(part.body.get("placeholder") or "")
                seen[token] = replace_refs(observation, own, placeholder) if own else observation
    return tuple(seen.values())


def _union_of(parts: list[Contribution], subject: Any) -> dict[str, Any]:
    if not parts:
        raise FhirConflict("the study's parts vanished while it was written; re-reading")
    return union([Part(c.body["study"], c.body.get("endpoint")) for c in parts], subject)
