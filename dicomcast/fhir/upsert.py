"""Reconcile one study's desired FHIR state with what the server holds now.

Per study: one batch read (Patient and ImagingStudy by identifier), a merge that touches only
the elements the mappings own, and one transaction — or nothing at all when the merge
changes nothing. Creates are conditional (`ifNoneExist`) and updates carry `If-Match`, so
concurrent workers or an EHR writing at the same time can never produce duplicates or lose
updates; a conflict re-reads and merges again.

A study this worker never wrote skips the read: both resources go out as conditional
creates in one request, and the answer says what happened. `201` for both is the common
case and costs one request. A `200` means the resource was there already: an ImagingStudy
then goes through read-merge-write; a Patient that existed gets its policy (fill-missing,
overwrite) applied by the same read-merge-write, which also proves the new study points
at it.

A write is recorded only when it is proven: an answer without per-entry statuses (an
empty `200`, which Medplum gives even when entries inside failed) is followed by a
read-back, and anything the read-back does not show is written again. A refused write on a
server that kept the rest of the transaction leaves no ImagingStudy pointing at nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from dicomcast.errors import FhirConflict, FhirRejected
from dicomcast.fhir import observations
from dicomcast.fhir.capabilities import WriteMode
from dicomcast.fhir.client import FhirClient
from dicomcast.fhir.entries import (
    comparable,
    create_entry,
    created_id,
    merge_owned,
    proven,
    replace_refs,
    retired,
    update_entry,
)
from dicomcast.fhir.orders import Orders
from dicomcast.fhir.patients import KnownPatients, merge_patient, single
from dicomcast.fhir.writes import Guard, Writes, unguarded
from dicomcast.mapping.mapper import MappedStudy, search_token
from dicomcast.model import BasedOnPolicy, DeletedStudyPolicy, PatientPolicy

log = logging.getLogger(__name__)
CONFLICT_ATTEMPTS = 4
Compose = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class UpsertResult:
    patient_id: str | None
    imaging_study_id: str | None
    wrote: bool


class _Differs(Exception):
    """A dry run found resources to write."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.count = count


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
        max_entries: int = 100,
        based_on: BasedOnPolicy = "resolve",
        observation_owned: frozenset[str] = frozenset(),
        mode: Callable[[], WriteMode] | None = None,
        guard: Guard = unguarded,
    ) -> None:
        """`mode` finds how the server takes writes (default: transactions of up to
        `max_entries`, conditional create, If-Match); `guard(key)` holds our lock on a
        Patient identifier when the server cannot keep twins out by itself."""
        self.client = client
        self.writes = Writes(client, mode or (lambda: WriteMode(max_entries=max_entries)), guard)
        # The elements of dose Observations the mapping writes; empty: they are off.
        self.observation_owned = observation_owned
        self.patient_owned = patient_owned
        # basedOn is shared with order systems: ours is added to theirs (see orders.py).
        self.study_owned = study_owned - {"basedOn"}
        self.orders = Orders(based_on, lambda query: client.search_many([query])[0])
        self.patient_policy = patient_policy
        self.deleted_policy = deleted_policy
        self.known = KnownPatients()

    # --- Endpoint

    def ensure_endpoint(
        self,
        endpoint: dict[str, Any],
        check: Callable[[dict[str, Any]], dict[str, Any]] = lambda e: e,
    ) -> str:
        """Find (or create, or update) the source's Endpoint; returns `Endpoint/{id}`.
        `check` validates what is written; one the server holds as it is needs none."""
        token = search_token(endpoint)
        for _ in range(CONFLICT_ATTEMPTS):
            current = single(self.client.search(f"Endpoint?identifier={token}"), "Endpoint", token)
            if current is None:
                created = check(endpoint)
                (response,) = self.writes.send([create_entry(created)])
                resource_id, _ = created_id(response)
                if not (resource_id and proven(response)):
                    continue  # the answer proves nothing: read it back
                self.writes.if_match_target({**created, "id": resource_id})
                return f"Endpoint/{resource_id}"
            merged = merge_owned(current, endpoint, frozenset(endpoint) - {"resourceType"})
            if comparable(merged) != comparable(current):
                endpoint = check(endpoint)
                merged = merge_owned(current, endpoint, frozenset(endpoint) - {"resourceType"})
            if comparable(merged) != comparable(current):
                try:
                    self.writes.send([update_entry(merged, current)])
                except FhirConflict:
                    continue
            self.writes.if_match_target(current)  # the version read is stale either way
            return f"Endpoint/{current['id']}"
        raise FhirConflict("Endpoint kept changing while it was being written")

    # --- studies

    def upsert_study(
        self,
        mapped: MappedStudy,
        *,
        new: bool = False,
        compose: Compose | None = None,
        study_id: str | None = None,
    ) -> UpsertResult:
        """Make the server hold `mapped`; no request beyond the read when nothing changed.

        `new` says this worker never wrote the study: try the one-request create first.
        `compose`, when several sources hold the study, recomputes the desired ImagingStudy
        after each read: a conflict then merges what another source wrote meanwhile.
        `study_id`, the ImagingStudy's id as last written, lets the read of its dose
        Observations go in the same batch (it is checked against what the read finds)."""
        with self.writes.guarded(f"Patient {search_token(mapped.patient)}"):
            try:
                if new and self.writes.mode().blind_creates:
                    try:
                        created = self._create_all(mapped)
                    except FhirConflict:
                        created = None  # e.g. two matches for an identifier: the read path says
                    if created is not None:
                        return created
                return self._upsert(mapped, compose, study_id)
            except FhirRejected as exc:
                if exc.stored:  # a non-atomic server kept the rest of a refused transaction
                    self._remove_dangling(mapped)
                raise

    def _upsert(
        self, mapped: MappedStudy, compose: Compose | None, study_id: str | None
    ) -> UpsertResult:
        for attempt in range(CONFLICT_ATTEMPTS):
            try:
                result = self._upsert_once(mapped, compose, study_id)
                self.known.remember(mapped.patient, result.patient_id)
                return result
            except FhirConflict:
                log.info(
                    "conflict writing study %s, re-reading (attempt %d)",
                    mapped.study_uid,
                    attempt + 1,
                )
        raise FhirConflict(f"study {mapped.study_uid} kept changing on the FHIR server")

    @property
    def writes_observations(self) -> bool:
        """Dose Observations are on (their mapping file is loaded)."""
        return bool(self.observation_owned)

    def differs(self, mapped: MappedStudy, study_id: str | None = None) -> int:
        """How many resources of the study FHIR holds otherwise than it would be written
        now (0: in sync); reads only, for `dicomcast verify`."""
        try:
            self._upsert_once(mapped, None, study_id, dry=True)
        except _Differs as exc:
            return exc.count
        return 0

    def _upsert_once(
        self,
        mapped: MappedStudy,
        compose: Compose | None,
        study_hint: str | None,
        *,
        dry: bool = False,
    ) -> UpsertResult:
        """Read, merge, and write what differs; `dry`: write nothing, and raise `_Differs`
        when there is something to write."""
        patient_token = search_token(mapped.patient)
        study_token = search_token(mapped.imaging_study)
        order_queries = self.orders.queries(mapped.imaging_study)
        wanted_obs = list(mapped.observations) if self.writes_observations else []
        obs_queries = [observations.by_identifier(o) for o in wanted_obs]
        member_queries = (
            [observations.of_study(study_hint)] if study_hint and self.writes_observations else []
        )
        patients, studies, *rest = self.client.search_many(
            [
                f"Patient?identifier={patient_token}",
                f"ImagingStudy?identifier={study_token}",
                *order_queries,
                *obs_queries,
                *member_queries,
            ]
        )
        orders = rest[: len(order_queries)]
        found_obs = rest[len(order_queries) : len(order_queries) + len(obs_queries)]
        current_patient = single(patients, "Patient", patient_token)
        current_study = single(studies, "ImagingStudy", study_token)
        members: list[dict[str, Any]] = []
        if current_study is not None and self.writes_observations:
            if study_hint == current_study["id"]:
                members = rest[-1]
            else:  # the hint was stale or missing: read the study's Observations now
                members = self.client.search(observations.of_study(str(current_study["id"])))

        patient_entry: dict[str, Any] | None = None
        if current_patient is None:
            patient_ref = mapped.patient_placeholder
            patient_entry = create_entry(mapped.patient, patient_ref)
        else:
            patient_ref = f"Patient/{current_patient['id']}"
            merged = merge_patient(
                current_patient, mapped.patient, self.patient_owned, self.patient_policy
            )
            if comparable(merged) != comparable(current_patient):
                patient_entry = update_entry(merged, current_patient)

        wanted = compose() if compose else mapped.imaging_study
        answers = dict(zip(order_queries, orders, strict=True))
        wanted = self.orders.apply(wanted, current_study, answers)
        desired = replace_refs(wanted, mapped.patient_placeholder, patient_ref)
        study_entry: dict[str, Any] | None = None
        if current_study is None:
            study_ref = mapped.study_placeholder or ""
            study_entry = create_entry(desired, mapped.study_placeholder)
        else:
            study_ref = f"ImagingStudy/{current_study['id']}"
            merged_study = merge_owned(current_study, desired, self.study_owned)
            if comparable(merged_study) != comparable(current_study):
                study_entry = update_entry(merged_study, current_study)
        obs_desired = [
            replace_refs(
                replace_refs(o, mapped.patient_placeholder, patient_ref),
                mapped.study_placeholder or "",
                study_ref,
            )
            for o in wanted_obs
        ]
        obs_plan = observations.plan(
            obs_desired, found_obs, members, self.observation_owned, self.deleted_policy
        )

        patient_id = current_patient["id"] if current_patient else None
        study_id = current_study["id"] if current_study else None
        entries = [e for e in (patient_entry, study_entry) if e is not None] + obs_plan.entries
        if not entries:
            return UpsertResult(patient_id, study_id, wrote=False)
        if dry:
            raise _Differs(len(entries))
        responses = self.writes.send(entries)
        if not all(proven(r) for r in responses):
            # The answer proves nothing: what a read shows is the result, ids included.
            return replace(self._read_back(mapped, compose, study_id), wrote=True)
        # Responses come back in entry order: the Patient's, the ImagingStudy's, then the rest.
        if patient_entry is not None:
            patient_id = created_id(responses[0])[0] or patient_id
        if study_entry is not None:
            study_id, created = created_id(responses[1 if patient_entry is not None else 0])
            if current_study is None and not created:
                # Someone created it between our read and our write: merge with theirs.
                raise FhirConflict("ImagingStudy appeared concurrently")
        observations.check_creates(entries, responses)
        return UpsertResult(patient_id, study_id, wrote=True)

    def _read_back(
        self, mapped: MappedStudy, compose: Compose | None, study_hint: str | None
    ) -> UpsertResult:
        """The proof of a write whose answer proved nothing: a dry run of the same
        read-merge. Anything still to write did not land as answered: a conflict, and the
        caller reads and writes again."""
        try:
            return self._upsert_once(mapped, compose, study_hint, dry=True)
        except _Differs as exc:
            log.warning(
                "the FHIR server answered a write of study %s that a read-back does not show "
                "(%d resources differ); writing again",
                mapped.study_uid,
                exc.count,
            )
            raise FhirConflict(
                "a read-back does not show what the FHIR server said it wrote"
            ) from None

    def _create_all(self, mapped: MappedStudy) -> UpsertResult | None:
        """Conditional creates of Patient, ImagingStudy and its dose Observations in one
        transaction; None when the ImagingStudy already existed (the caller reads and
        merges instead)."""
        wanted_obs = list(mapped.observations) if self.writes_observations else []
        entries = [
            create_entry(mapped.patient, mapped.patient_placeholder),
            create_entry(self.orders.apply(mapped.imaging_study, None), mapped.study_placeholder),
        ]
        inline = len(entries) + len(wanted_obs) <= self.writes.mode().max_entries
        if inline:
            entries += [create_entry(o) for o in wanted_obs]
        responses = self.writes.send(entries)
        patient_id, patient_created = created_id(responses[0])
        study_id, study_created = created_id(responses[1])
        if not all(proven(r) for r in responses):
            return None  # the answer proves nothing: the read path finds what is there
        if not study_created:
            return None
        all_created = all(created_id(r)[1] for r in responses[2:])
        known = not patient_created and patient_id == self.known.id_of(mapped.patient)
        if (not patient_created and not known) or (wanted_obs and not (inline and all_created)):
            # A Patient that existed, not yet seen by this process: its policy applies
            # (fill-missing, overwrite), and the study must point at it (a server once
            # answered "exists at A" and linked the study to a B that never existed). Or
            # Observations were left for later. One read-merge-write does all of it.
            result = self._upsert(mapped, None, study_id)
            return UpsertResult(result.patient_id or patient_id, study_id, wrote=True)
        if patient_created:
            self.known.remember(mapped.patient, patient_id)
        return UpsertResult(patient_id, study_id, wrote=True)

    def _remove_dangling(self, mapped: MappedStudy) -> None:
        """After a refused write on a server that kept the rest of it: an ImagingStudy of
        this study whose subject does not resolve (its Patient was the refused entry) is
        removed, never left pointing at nothing; the next attempt writes it whole."""
        token = search_token(mapped.imaging_study)
        for study in self.client.search(f"ImagingStudy?identifier={token}"):
            subject = (study.get("subject") or {}).get("reference")
            if isinstance(subject, str) and not self.client.resolves(subject):
                log.warning(
                    "removing the ImagingStudy of study %s the FHIR server stored although "
                    "its Patient was refused",
                    mapped.study_uid,
                )
                self.remove_study(token)
                return

    def remove_study(self, token: str) -> int:
        """Reflect a deleted study, found by its match-key search token: delete its
        ImagingStudy and dose Observations, or mark them entered-in-error."""
        for _ in range(CONFLICT_ATTEMPTS):
            matches = self.client.search(f"ImagingStudy?identifier={token}")
            try:
                for resource in matches:
                    self._retire_observations(str(resource["id"]))
                    if self.deleted_policy == "delete":
                        self.client.delete("ImagingStudy", resource["id"])
                    elif (entry := retired(resource, self.deleted_policy)) is not None:
                        self.writes.send([entry])
            except FhirConflict:
                continue  # changed under us: read again
            return len(matches)
        raise FhirConflict(f"study {token} kept changing while it was being removed")

    def _retire_observations(self, study_id: str) -> None:
        """Before its ImagingStudy goes, the dose Observations dicomcast made of it go (a
        server that keeps referential integrity refuses to delete what they point at)."""
        if not self.writes_observations:
            return
        members = self.client.search(observations.of_study(study_id))
        entries = [
            entry
            for member in members
            if observations.is_ours(member)
            and (entry := retired(member, self.deleted_policy)) is not None
        ]
        if entries:
            self.writes.send(entries)
