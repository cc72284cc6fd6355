"""Drift, measured: the studies a source holds compared with what FHIR holds of them.

A feed that silently stopped (a PACS migrated, a plugin lost, a cursor moved by hand)
leaves no failure behind: only a comparison of both sides shows it. Per study of the
source's listing (by StudyDate window), its ImagingStudy is looked up by identifier:

- `missing`: the source has the study, FHIR has no ImagingStudy of it;
- `duplicate`: two or more ImagingStudies carry its identifier;
- `dangling`: a reference of ours in it (subject, endpoint, basedOn) does not resolve;
- `stale`: it differs from what the study maps to now (counts, content, a hand edit);

and each ImagingStudy of the source's Endpoint in FHIR whose study the listing did not
show is `extra`. Reads only; the caller decides what to mark dirty (`--fix`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dicomcast.errors import StudyError
from dicomcast.fhir.upsert import FhirWriter
from dicomcast.mapping.mapper import Mappings, search_token
from dicomcast.mapping.settings import MappingConfigs
from dicomcast.model import DateSpan
from dicomcast.sources.base import Source, archive_of

log = logging.getLogger(__name__)
UID_PREFIX = "urn:oid:"


class DriftKind(StrEnum):
    MISSING = "missing"
    EXTRA = "extra"
    STALE = "stale"
    DANGLING = "dangling"
    DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Drift:
    """One study out of sync; `detail` names what, never patient data."""

    kind: DriftKind
    study_uid: str | None
    study_key: str | None = None
    detail: str = ""


@dataclass
class Verifier:
    """Compares one source with the FHIR server; `endpoint_of(location)` gives the
    Endpoint reference the worker writes (None where the source has none)."""

    name: str
    source: Source
    mappings: Mappings
    writer: FhirWriter
    configs: MappingConfigs
    endpoint_of: Callable[[Any], str | None]
    page_size: int = 200

    def run(self, span: DateSpan) -> Iterator[Drift]:
        seen: set[str] = set()
        after: str | None = None
        while True:
            page = archive_of(self.source).archive(span, after, self.page_size)
            for key in page.keys:
                yield from self.study(key, seen)
            after = page.after
            if after is None:
                break
        yield from self.extras(span, seen)

    def study(self, key: str, seen: set[str]) -> Iterator[Drift]:
        fetched = self.source.fetch_study(key)
        if fetched.view is None:
            return  # gone since it was listed: the worker's business, not drift
        view = fetched.view
        seen.add(view.uid)
        location = self.source.location(key)
        endpoint = self.endpoint_of(location)
        try:
            mapped = self.mappings.map_study(
                view, self.configs.of(self.name, location), endpoint, scope=location.scope
            )
        except StudyError:
            return  # it cannot be written at all: `failures list` has it
        token = search_token(mapped.imaging_study)
        found = self.writer.client.search(f"ImagingStudy?identifier={token}")
        if not found:
            yield Drift(DriftKind.MISSING, view.uid, key)
            return
        if len(found) > 1:
            yield Drift(DriftKind.DUPLICATE, view.uid, key, f"{len(found)} ImagingStudies")
            return
        broken = [ref for ref in _our_references(found[0]) if not self.writer.client.resolves(ref)]
        if broken:
            yield Drift(DriftKind.DANGLING, view.uid, key, ", ".join(sorted(broken)))
            return
        try:
            differs = self.writer.differs(mapped, str(found[0].get("id")))
        except StudyError as exc:  # e.g. two Patients for its identifier
            yield Drift(DriftKind.DUPLICATE, view.uid, key, str(exc))
            return
        if differs:
            yield Drift(DriftKind.STALE, view.uid, key, f"{differs} resources differ")

    def extras(self, span: DateSpan, seen: set[str]) -> Iterator[Drift]:
        """ImagingStudies of this source's Endpoint whose study the listing did not show."""
        location = self.source.default_location()
        endpoint = self.endpoint_of(location) if location is not None else None
        if endpoint is None:
            return  # no Endpoint tells this source's studies apart in FHIR
        query = f"ImagingStudy?endpoint={endpoint}&_count=200"
        if span.since:
            query += f"&started=ge{span.since.isoformat()}"
        if span.until:
            query += f"&started=le{span.until.isoformat()}T23:59:59Z"
        for study in self.writer.client.search_pages(query):
            uid = _study_uid(study)
            if uid and uid not in seen:
                yield Drift(DriftKind.EXTRA, uid, None, f"ImagingStudy/{study.get('id')}")


def _our_references(study: dict[str, Any]) -> list[str]:
    """The literal references dicomcast writes into an ImagingStudy."""
    refs = [(study.get("subject") or {}).get("reference")]
    refs += [e.get("reference") for e in study.get("endpoint") or [] if isinstance(e, dict)]
    refs += [b.get("reference") for b in study.get("basedOn") or [] if isinstance(b, dict)]
    return [r for r in refs if isinstance(r, str) and r.count("/") == 1]


def _study_uid(study: dict[str, Any]) -> str | None:
    for identifier in study.get("identifier") or []:
        value = identifier.get("value") if isinstance(identifier, dict) else None
        if isinstance(value, str) and value.startswith(UID_PREFIX):
            return value[len(UID_PREFIX) :]
    return None
