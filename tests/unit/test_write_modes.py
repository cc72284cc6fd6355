"""Capability-aware writes: the mode a CapabilityStatement allows, and the same FHIR state
reached in every mode, on a server that runs no transactions, no batches, no conditional
create or no If-Match, with no twin Patient when studies of one patient go at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomcast.config import load_settings
from dicomcast.errors import ConfigError
from dicomcast.fhir.capabilities import WriteMode, from_statement, learnt
from dicomcast.fhir.client import FhirClient
from dicomcast.fhir.entries import create_entry
from dicomcast.fhir.writes import Writes
from dicomcast.sandbox.samples import bulk_studies
from tests.fakes import FakeSource, dicom_json, fake_worker
from tests.fhir_fake import FakeFhir

WRITTEN = frozenset({"create", "update", "search-type"})
NEEDS = {"Patient": WRITTEN, "ImagingStudy": WRITTEN | {"delete"}, "Endpoint": WRITTEN}


def statement(
    bundles: tuple[str, ...] = ("transaction", "batch"),
    *,
    conditional: bool = True,
    versioned: bool = True,
    interactions: frozenset[str] = WRITTEN | {"read", "delete"},
) -> dict[str, Any]:
    """A CapabilityStatement as servers write them (sekmet's, HAPI's), trimmed."""
    resources = [
        {
            "type": kind,
            "interaction": [{"code": code} for code in sorted(interactions)],
            **({"conditionalCreate": True} if conditional else {}),
            "versioning": "versioned-update" if versioned else "no-version",
        }
        for kind in ("Patient", "ImagingStudy", "Endpoint", "Observation")
    ]
    rest = {
        "mode": "server",
        "resource": resources,
        "interaction": [{"code": code} for code in (*bundles, "history-system")],
    }
    return {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [rest]}


def test_versioned_or_nothing_says_nothing_about_if_match_and_it_is_learnt() -> None:
    said = statement()
    for resource in said["rest"][0]["resource"]:
        resource["versioning"] = "versioned"  # Medplum's, which enforces If-Match
    mode = from_statement(said, NEEDS, 50)
    assert mode.if_match and mode.probe_if_match and "learnt" in mode.describe()
    for enforced in (True, False):
        told = learnt(mode, enforced)
        assert told.if_match is enforced and not told.probe_if_match
        assert ("is enforced" if enforced else "not enforced") in told.describe()


def server(
    bundles: tuple[str, ...] = ("transaction", "batch"),
    *,
    conditional: bool = True,
    versioned: bool = True,
) -> FakeFhir:
    """A fake FHIR server that does what its statement says, and only that."""
    fhir = FakeFhir()
    fhir.bundles = set(bundles)
    fhir.conditional_create = conditional
    fhir.if_match = versioned
    fhir.statement = statement(bundles, conditional=conditional, versioned=versioned)
    return fhir


@pytest.mark.parametrize(
    ("bundles", "conditional", "versioned", "expected"),
    [
        (("transaction", "batch"), True, True, ("transaction", True, True)),
        (("batch",), True, True, ("batch", True, True)),
        ((), True, True, ("single", True, True)),
        (("transaction",), False, True, ("transaction", False, True)),
        (("transaction",), True, False, ("transaction", True, False)),
    ],
)
def test_the_write_mode_follows_the_capability_statement(
    bundles: tuple[str, ...],
    conditional: bool,
    versioned: bool,
    expected: tuple[str, bool, bool],
) -> None:
    said = statement(bundles, conditional=conditional, versioned=versioned)
    mode = from_statement(said, NEEDS, 50)
    assert (mode.bundle, mode.conditional_create, mode.if_match) == expected
    assert mode.max_entries == (1 if mode.bundle == "single" else 50)
    assert mode.missing == ()
    assert bool(mode.reasons) == (expected != ("transaction", True, True))


def test_a_statement_that_says_nothing_is_taken_as_the_full_mode() -> None:
    mode = from_statement({"resourceType": "CapabilityStatement"}, NEEDS, 100)
    assert (mode.bundle, mode.conditional_create, mode.blind_creates) == ("transaction", True, True)


def test_interactions_the_server_does_not_list_are_named() -> None:
    said = statement(interactions=frozenset({"read", "search-type", "create"}))
    rest = said["rest"][0]
    rest["resource"] = [r for r in rest["resource"] if r["type"] != "Endpoint"]
    mode = from_statement(said, NEEDS, 100)
    assert mode.missing == (
        "Endpoint (not supported at all)",
        "ImagingStudy delete",
        "ImagingStudy update",
        "Patient update",
    )


def studies(count: int, patients: int) -> FakeSource:
    specs = bulk_studies(count, 2, patients=patients, prefix="modes")
    return FakeSource({spec.study_uid: dicom_json(spec) for spec in specs})


def by_identifier(fhir: FakeFhir) -> dict[str, list[dict[str, Any]]]:
    """Every stored resource, ids and versions left out and references named by the
    target's identifier: equal for servers that hold the same things."""
    names = {
        f"{kind}/{r['id']}": f"{kind}|{r['identifier'][0]['value']}"
        for kind in fhir.resources
        for r in fhir.all(kind)
    }

    def named(value: Any) -> Any:
        if isinstance(value, dict):
            if value.get("reference") in names:
                return {**value, "reference": names[value["reference"]]}
            return {k: named(v) for k, v in value.items() if k not in ("id", "meta")}
        if isinstance(value, list):
            return [named(v) for v in value]
        return value

    return {kind: sorted(map(named, fhir.all(kind)), key=repr) for kind in sorted(fhir.resources)}


def sync(tmp_path: Path, fhir: FakeFhir, source: FakeSource, **overrides: Any) -> None:
    """Run the worker twice: the second run must write nothing."""
    tmp_path.mkdir(exist_ok=True)
    worker = fake_worker(tmp_path, fhir, source, concurrency=4, **overrides)
    try:
        assert worker.run_once() == 0
        assert worker.totals["synced"] == len(source.studies)
        versions = fhir.versions()
        for key in source.studies:
            source.feed.append(key)  # every study again: nothing changed
        assert worker.run_once() == 0
        assert fhir.versions() == versions
    finally:
        worker.close()
        worker.app.close()


@pytest.mark.parametrize(
    ("bundles", "conditional", "versioned"),
    [
        (("batch",), True, True),
        ((), True, True),
        (("transaction",), False, False),
        (("batch",), False, True),
        ((), False, False),
    ],
    ids=["batch", "single", "transaction-bare", "batch-no-conditional", "single-bare"],
)
def test_every_write_mode_ends_in_the_state_transactions_reach(
    tmp_path: Path, bundles: tuple[str, ...], conditional: bool, versioned: bool
) -> None:
    reference = server()
    sync(tmp_path / "reference", reference, studies(12, 3))
    other = server(bundles, conditional=conditional, versioned=versioned)
    sync(tmp_path / "other", other, studies(12, 3))
    assert by_identifier(other) == by_identifier(reference)
    assert [len(other.all(k)) for k in ("Endpoint", "Patient", "ImagingStudy")] == [1, 3, 12]
    if not {"transaction", "batch"} & set(bundles):
        assert {kind for method, kind in other.requests if method == "POST"} <= {
            "batch",  # the reads still go in batches where the server takes them
            "Patient",
            "ImagingStudy",
            "Endpoint",
        }


def test_without_conditional_create_studies_of_one_patient_at_once_make_one_patient(
    tmp_path: Path,
) -> None:
    fhir = server(("transaction",), conditional=False, versioned=False)
    sync(tmp_path, fhir, studies(16, 1))
    assert len(fhir.all("Patient")) == 1
    assert len(fhir.all("ImagingStudy")) == 16


def test_a_server_that_claims_conditional_create_but_ignores_it_makes_twins(
    tmp_path: Path,
) -> None:
    """Why the mode is read from the statement and not assumed: the same run, on a server
    that ignores `ifNoneExist` while the configuration says it keeps it."""
    fhir = server(("transaction",), conditional=False, versioned=False)
    worker = fake_worker(
        tmp_path,
        fhir,
        studies(16, 1),
        concurrency=4,
        fhir_writes="transaction,conditional-create,if-match",
    )
    try:
        assert worker.run_once() == 0
    finally:
        worker.close()
        worker.app.close()
    assert len(fhir.all("Patient")) > 1


def test_a_configured_mode_is_used_without_reading_the_statement(tmp_path: Path) -> None:
    fhir = server(("transaction", "batch"))
    sync(tmp_path, fhir, studies(3, 1), fhir_writes="single,conditional-create,if-match")
    assert ("GET", "metadata") not in fhir.requests
    assert not {kind for _, kind in fhir.requests} & {"transaction"}


def test_an_unknown_write_mode_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"fhir_writes.*'auto', or one of"):
        load_settings(None, fhir_writes="atomic")


def test_entries_wait_for_the_ids_of_the_entries_they_point_at() -> None:
    fhir = server(())
    client = FhirClient("http://fhir.test/fhir", transport=fhir)
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:s", "value": "p"}]}
    study = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2"}],
        "status": "available",
        "subject": {"reference": "urn:uuid:patient"},
    }
    # The study is listed first, yet goes second: it points at the Patient.
    writes = Writes(client, lambda: WriteMode(bundle="single", max_entries=1))
    answers = writes.send(
        [create_entry(study, "urn:uuid:study"), create_entry(patient, "urn:uuid:patient")]
    )
    assert [a["response"]["status"] for a in answers] == ["201", "201"]
    (stored,) = fhir.all("ImagingStudy")
    (stored_patient,) = fhir.all("Patient")
    assert stored["subject"]["reference"] == f"Patient/{stored_patient['id']}"
    assert [kind for method, kind in fhir.requests if method == "POST"] == [
        "Patient",
        "ImagingStudy",
    ]
    client.close()


def test_a_failed_single_request_raises_what_its_status_means() -> None:
    fhir = server(())
    fhir.fail_next = [httpx.Response(412)]
    client = FhirClient("http://fhir.test/fhir", transport=fhir)
    writes = Writes(client, lambda: WriteMode(bundle="single", max_entries=1))
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:s", "value": "p"}]}
    with pytest.raises(Exception, match="412 version conflict"):
        writes.send([create_entry(patient)])
    client.close()


def test_a_bundle_the_server_finds_too_large_is_sent_in_smaller_ones(tmp_path: Path) -> None:
    fhir = server()
    fhir.status_for = lambda bundle: 413 if len(bundle.get("entry", [])) > 1 else None
    sync(tmp_path, fhir, studies(4, 2))
    assert [len(fhir.all(k)) for k in ("Endpoint", "Patient", "ImagingStudy")] == [1, 2, 4]


def test_a_statement_the_server_will_not_show_leaves_the_usual_mode(tmp_path: Path) -> None:
    fhir = server()
    fhir.statement = None  # a 404, as behind some gateways
    sync(tmp_path, fhir, studies(3, 1))
    assert len(fhir.all("ImagingStudy")) == 3
    assert ("POST", "transaction") in fhir.requests
