"""The dose Observations of one study: what to create, update and remove on the server.

An Observation is found by its first identifier (the dose report's SOP Instance UID), so a
replay, a resync or a re-sent report updates the one Observation there is, never adds one.
The Observations of a study that dicomcast made are those `partOf` its ImagingStudy whose
first identifier has the system `urn:dicom:uid` (a DICOM object's UID); one whose report is
no longer in the study is deleted or marked `entered-in-error`, as the deleted-study policy
says. Observations others wrote about the study (other identifiers) are never touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dicomcast.errors import FhirConflict, MappingError
from dicomcast.fhir.entries import (
    comparable,
    create_entry,
    created_id,
    merge_owned,
    retired,
    update_entry,
)
from dicomcast.mapping.mapper import search_token
from dicomcast.model import DeletedStudyPolicy

DICOM_UID = "urn:dicom:uid"


def is_ours(resource: Mapping[str, Any]) -> bool:
    """Made by dicomcast from a DICOM object: its first identifier is a DICOM UID."""
    identifiers = resource.get("identifier") or []
    first = identifiers[0] if identifiers and isinstance(identifiers[0], dict) else {}
    return first.get("system") == DICOM_UID and bool(first.get("value"))


def of_study(study_id: str) -> str:
    """The search for every Observation that is part of an ImagingStudy."""
    return f"Observation?part-of=ImagingStudy/{study_id}"


def by_identifier(observation: Mapping[str, Any]) -> str:
    return f"Observation?identifier={search_token(observation)}"


@dataclass(frozen=True)
class ObservationPlan:
    """The entries that make the server's Observations of a study what DICOM says, in the
    order the transaction needs: creates (which may point at the study's placeholders)
    come after the Patient and ImagingStudy entries the caller puts first."""

    entries: list[dict[str, Any]]
    creates: int  # how many entries are creates (a `200` answer to one is a conflict)


def plan(
    desired: Sequence[dict[str, Any]],
    found: Sequence[list[dict[str, Any]]],
    study_members: Sequence[dict[str, Any]],
    owned: frozenset[str],
    policy: DeletedStudyPolicy,
) -> ObservationPlan:
    """What to write: `found[i]` are the Observations with desired[i]'s identifier,
    `study_members` those part of the study now (from `of_study`)."""
    entries: list[dict[str, Any]] = []
    creates = 0
    wanted = {search_token(o) for o in desired}
    seen_ids: set[str] = set()
    for observation, matches in zip(desired, found, strict=True):
        if len(matches) > 1:
            raise MappingError(
                f"{len(matches)} Observations carry one dose report's identifier; refusing to "
                "guess which one is right (merge them on the FHIR server, then retry)",
                detail=f"identifier {search_token(observation)}",
            )
        if not matches:
            entries.append(create_entry(observation))
            creates += 1
            continue
        current = matches[0]
        seen_ids.add(str(current.get("id")))
        merged = merge_owned(current, observation, owned)
        if comparable(merged) != comparable(current):
            entries.append(update_entry(merged, current))
    for current in study_members:
        if str(current.get("id")) in seen_ids or not is_ours(current):
            continue
        try:
            if search_token(current) in wanted:
                continue
        except MappingError:
            continue
        entry = retired(current, policy)
        if entry is not None:
            entries.append(entry)
    return ObservationPlan(entries, creates)


def check_creates(entries: list[dict[str, Any]], responses: list[dict[str, Any]]) -> None:
    """A conditional create of an Observation answered `200` found one made meanwhile."""
    for entry, response in zip(entries, responses, strict=False):
        request = entry.get("request", {})
        resource = entry.get("resource") or {}
        if (
            request.get("method") == "POST"
            and resource.get("resourceType") == "Observation"
            and not created_id(response)[1]
        ):
            raise FhirConflict("an Observation appeared concurrently")
