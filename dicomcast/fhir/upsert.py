"""Reconcile one study's desired FHIR state with what the server holds now.

Per study: one batch read (Patient and ImagingStudy by identifier), a merge that touches only
the elements the mappings own, and one transaction — or nothing at all when the merge
changes nothing. Creates are conditional (`ifNoneExist`) and updates carry `If-Match`, so
concurrent workers or an EHR writing at the same time can never produce duplicates or lose
updates; a conflict re-reads and merges again.

A study this worker never wrote skips the read: both resources go out as conditional
creates in one request, and the answer says what happened. `201` for both is the common
case and costs one request. A `200` means the resource was there already: an ImagingStudy
then goes through read-merge-write, and a Patient not reconciled before gets its policy
(fill-missing, overwrite) applied by a read and, when needed, an update.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from dicomcast.errors import FhirConflict, MappingError
from dicomcast.fhir.client import FhirClient
from dicomcast.fhir.orders import Orders
from dicomcast.mapping.mapper import MappedStudy, content_hash, search_token
from dicomcast.model import BasedOnPolicy, DeletedStudyPolicy, PatientPolicy

log = logging.getLogger(__name__)
SERVER_OWNED = ("id", "meta")
CONFLICT_ATTEMPTS = 4
KNOWN_PATIENTS = 100_000  # Patients remembered as reconciled (token -> content digest)
Compose = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class UpsertResult:
    patient_id: str | None
    imaging_study_id: str | None
    wrote: bool


def _comparable(resource: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in SERVER_OWNED}


def _version(resource: Mapping[str, Any]) -> str | None:
    version = resource.get("meta", {}).get("versionId")
    return f'W/"{version}"' if version else None


def identifier_words(token: str) -> str:
    """A match key as logs may show it: its system and a hash of its value (a Patient's
    value is an MRN). The key itself goes in an error's `detail`."""
    plain = unquote(token)
    digest = hashlib.sha256(plain.encode()).hexdigest()[:12]
    return f"identifier of system {plain.split('|', 1)[0]} (value hash {digest})"


def _single(matches: list[dict[str, Any]], what: str, token: str) -> dict[str, Any] | None:
    if len(matches) > 1:
        raise MappingError(
            f"{len(matches)} {what} resources match one {identifier_words(token)}; refusing to "
            "guess which one is right (merge them on the FHIR server, then retry)",
            detail=f"identifier {unquote(token)}",
        )
    return matches[0] if matches else None


def _replace_refs(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        if value.get("reference") == old:
            return {**value, "reference": new}
        return {k: _replace_refs(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_refs(v, old, new) for v in value]
    return value


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


def merge_owned(
    current: dict[str, Any], desired: dict[str, Any], owned: frozenset[str]
) -> dict[str, Any]:
    """Owned elements come from DICOM (absent ones removed); others stay as the server has them."""
    merged = {k: v for k, v in current.items() if k not in owned}
    merged.update({k: v for k, v in desired.items() if k != "resourceType"})
    merged["resourceType"] = desired["resourceType"]
    return merged


def create_entry(resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    """A conditional create: the server makes the resource only if its match key is unused."""
    entry: dict[str, Any] = {"fullUrl": full_url} if full_url else {}
    entry["resource"] = resource
    entry["request"] = {
        "method": "POST",
        "url": resource["resourceType"],
        "ifNoneExist": f"identifier={search_token(resource)}",
    }
    return entry


def _created_id(entry: Mapping[str, Any]) -> tuple[str | None, bool]:
    """(id, created) from a transaction-response entry's location and status."""
    response = entry.get("response", {})
    location = str(response.get("location") or "")
    parts = location.split("/_history")[0].rstrip("/").split("/")
    resource_id = parts[-1] if len(parts) >= 2 else None
    if not resource_id and isinstance(entry.get("resource"), dict):
        resource_id = entry["resource"].get("id")
    return resource_id, str(response.get("status", "")).startswith("201")


class FhirWriter:
    """Writes studies into one FHIR server according to the configured policies."""

    def __init__(
        self,
        client: FhirClient,
        *,
        patient_owned: frozenset[str],
        study_owned: frozenset[str],
        patient_policy: PatientPolicy,
        deleted_policy: DeletedStudyPolicy,
        max_entries: int,
        based_on: BasedOnPolicy = "resolve",
    ) -> None:
        self.client = client
        self.patient_owned = patient_owned
        # basedOn is shared with order systems: ours is added to theirs (see orders.py).
        self.study_owned = study_owned - {"basedOn"}
        self.orders = Orders(based_on, lambda query: client.search_many([query])[0])
        self.patient_policy = patient_policy
        self.deleted_policy = deleted_policy
        self.max_entries = max_entries
        self._patients: OrderedDict[str, str] = OrderedDict()
        self._patients_lock = threading.Lock()

    # --- Endpoint

    def ensure_endpoint(self, endpoint: dict[str, Any]) -> str:
        """Find (or create, or update) the source's Endpoint; returns `Endpoint/{id}`."""
        token = search_token(endpoint)
        for _ in range(CONFLICT_ATTEMPTS):
            current = _single(self.client.search(f"Endpoint?identifier={token}"), "Endpoint", token)
            if current is None:
                (response,) = self.client.transaction([create_entry(endpoint)])
                resource_id, _ = _created_id(response)
                if resource_id:
                    return f"Endpoint/{resource_id}"
                continue
            merged = merge_owned(current, endpoint, frozenset(endpoint) - {"resourceType"})
            if _comparable(merged) != _comparable(current):
                try:
                    self.client.transaction([self._update(merged, current)])
                except FhirConflict:
                    continue
            return f"Endpoint/{current['id']}"
        raise FhirConflict("Endpoint kept changing while it was being written")

    # --- studies

    def upsert_study(
        self, mapped: MappedStudy, *, new: bool = False, compose: Compose | None = None
    ) -> UpsertResult:
        """Make the server hold `mapped`; no request beyond the read when nothing changed.

        `new` says this worker never wrote the study: try the one-request create first.
        `compose`, when several sources hold the study, recomputes the desired ImagingStudy
        after each read: a conflict then merges what another source wrote meanwhile."""
        if new and self.max_entries >= 2:
            try:
                created = self._create_both(mapped)
            except FhirConflict:
                created = None  # e.g. two matches for an identifier: the read path says so
            if created is not None:
                return created
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                result = self._upsert_once(mapped, compose)
                self._remember(mapped.patient)
                return result
            except FhirConflict:
                log.info(
                    "conflict writing study %s, re-reading (attempt %d)",
                    mapped.study_uid,
                    attempt + 1,
                )
        raise FhirConflict(f"study {mapped.study_uid} kept changing on the FHIR server")

    def _upsert_once(self, mapped: MappedStudy, compose: Compose | None) -> UpsertResult:
        patient_token = search_token(mapped.patient)
        study_token = search_token(mapped.imaging_study)
        order_queries = self.orders.queries(mapped.imaging_study)
        patients, studies, *orders = self.client.search_many(
            [
                f"Patient?identifier={patient_token}",
                f"ImagingStudy?identifier={study_token}",
                *order_queries,
            ]
        )
        current_patient = _single(patients, "Patient", patient_token)
        current_study = _single(studies, "ImagingStudy", study_token)

        patient_entry: dict[str, Any] | None = None
        if current_patient is None:
            patient_ref = mapped.patient_placeholder
            patient_entry = create_entry(mapped.patient, patient_ref)
        else:
            patient_ref = f"Patient/{current_patient['id']}"
            merged = merge_patient(
                current_patient, mapped.patient, self.patient_owned, self.patient_policy
            )
            if _comparable(merged) != _comparable(current_patient):
                patient_entry = self._update(merged, current_patient)

        wanted = compose() if compose else mapped.imaging_study
        answers = dict(zip(order_queries, orders, strict=True))
        wanted = self.orders.apply(wanted, current_study, answers)
        desired = _replace_refs(wanted, mapped.patient_placeholder, patient_ref)
        study_entry: dict[str, Any] | None = None
        if current_study is None:
            study_entry = create_entry(desired)
        else:
            merged_study = merge_owned(current_study, desired, self.study_owned)
            if _comparable(merged_study) != _comparable(current_study):
                study_entry = self._update(merged_study, current_study)

        patient_id = current_patient["id"] if current_patient else None
        study_id = current_study["id"] if current_study else None
        if patient_entry is None and study_entry is None:
            return UpsertResult(patient_id, study_id, wrote=False)

        entries = [e for e in (patient_entry, study_entry) if e is not None]
        if len(entries) > self.max_entries:
            # The server takes one entry per transaction: the Patient first, then the
            # ImagingStudy pointing at the id the Patient got.
            assert patient_entry is not None and study_entry is not None
            (patient_response,) = self.client.transaction([patient_entry])
            patient_id, _ = _created_id(patient_response)
            study_entry = _replace_refs(study_entry, patient_ref, f"Patient/{patient_id}")
            responses = [patient_response, *self.client.transaction([study_entry])]
        else:
            responses = self.client.transaction(entries)
        # Responses come back in entry order: the Patient's first, the ImagingStudy's last.
        if patient_entry is not None:
            patient_id = _created_id(responses[0])[0] or patient_id
        if study_entry is not None:
            study_id, created = _created_id(responses[-1])
            if current_study is None and not created:
                # Someone created it between our read and our write: merge with theirs.
                raise FhirConflict("ImagingStudy appeared concurrently")
        return UpsertResult(patient_id, study_id, wrote=True)

    def _create_both(self, mapped: MappedStudy) -> UpsertResult | None:
        """Conditional creates of Patient and ImagingStudy in one transaction; None when the
        ImagingStudy already existed (the caller reads and merges instead)."""
        patient_response, study_response = self.client.transaction(
            [
                create_entry(mapped.patient, mapped.patient_placeholder),
                create_entry(self.orders.apply(mapped.imaging_study, None)),
            ]
        )
        patient_id, patient_created = _created_id(patient_response)
        study_id, study_created = _created_id(study_response)
        if not study_created:
            return None
        if not patient_created and not self._known(mapped.patient):
            patient_id = self._reconcile_patient(mapped.patient) or patient_id
        self._remember(mapped.patient)
        return UpsertResult(patient_id, study_id, wrote=True)

    def _reconcile_patient(self, desired: dict[str, Any]) -> str | None:
        """Apply the Patient policy to a Patient that existed before our create."""
        token = search_token(desired)
        for _ in range(CONFLICT_ATTEMPTS):
            current = _single(self.client.search(f"Patient?identifier={token}"), "Patient", token)
            if current is None:
                return None
            merged = merge_patient(current, desired, self.patient_owned, self.patient_policy)
            if _comparable(merged) == _comparable(current):
                return str(current["id"])
            try:
                self.client.transaction([self._update(merged, current)])
            except FhirConflict:
                continue
            return str(current["id"])
        raise FhirConflict(
            f"Patient with {identifier_words(token)} kept changing while it was being written"
        )

    def _known(self, patient: Mapping[str, Any]) -> bool:
        """Was exactly this Patient content reconciled already (by this process)?"""
        if self.patient_policy == "never":
            return True
        with self._patients_lock:
            return self._patients.get(search_token(patient)) == content_hash(patient)

    def _remember(self, patient: Mapping[str, Any]) -> None:
        token, digest = search_token(patient), content_hash(patient)
        with self._patients_lock:
            self._patients[token] = digest
            self._patients.move_to_end(token)
            if len(self._patients) > KNOWN_PATIENTS:
                self._patients.popitem(last=False)

    @staticmethod
    def _update(merged: dict[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
        resource_type = current["resourceType"]
        resource = {**merged, "id": current["id"]}
        resource.pop("meta", None)
        request = {"method": "PUT", "url": f"{resource_type}/{current['id']}"}
        version = _version(current)
        if version:
            request["ifMatch"] = version
        return {"resource": resource, "request": request}

    def remove_study(self, token: str) -> int:
        """Reflect a deleted study, found by its match-key search token: delete its
        ImagingStudy, or mark it entered-in-error."""
        for _ in range(CONFLICT_ATTEMPTS):
            matches = self.client.search(f"ImagingStudy?identifier={token}")
            try:
                for resource in matches:
                    if self.deleted_policy == "delete":
                        self.client.delete("ImagingStudy", resource["id"])
                    elif resource.get("status") != "entered-in-error":
                        self.client.transaction(
                            [self._update({**resource, "status": "entered-in-error"}, resource)]
                        )
            except FhirConflict:
                continue  # changed under us: read again
            return len(matches)
        raise FhirConflict(f"study {token} kept changing while it was being removed")
