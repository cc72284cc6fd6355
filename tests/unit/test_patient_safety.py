"""Never put two issuers' patients in one namespace: a patient ID whose issuer no setting
places parks its study (by default) with a reason that says the fix; other studies go on."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from typer.testing import CliRunner

from dicomcast.cli import app as cli
from dicomcast.sandbox.samples import DEMO_ISSUERS, bulk_studies
from tests.fakes import FakeSource, dicom_json, fake_worker
from tests.fhir_fake import FakeFhir


def two_hospitals() -> FakeSource:
    """Patient `SAFE0` of HOSP-A (mapped) and patient `SAFE0` of HOSP-B (not mapped)."""
    a, b = bulk_studies(2, 2, patients=1, prefix="safe")
    b = dataclasses.replace(b, issuer="HOSP-B")
    return FakeSource({s.study_uid: dicom_json(s) for s in (a, b)})


def test_an_unknown_issuer_parks_its_study_and_the_fix_is_listed(tmp_path: Path) -> None:
    fhir = FakeFhir()
    worker = fake_worker(tmp_path, fhir, two_hospitals(), once_max_wait=0)
    try:
        worker.run_once()
        rows = worker.store.failures("default")
    finally:
        worker.close()
        worker.app.close()
    assert len(fhir.resources["Patient"]) == 1  # HOSP-A's patient only
    [row] = rows
    assert row.status == "failed" and row.error_kind == "UnknownIssuer"
    assert row.last_error == (
        "unknown issuer of patient ID 'HOSP-B': map it in DICOMCAST_ISSUER_SYSTEMS"
    )
    env = {"DICOMCAST_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"}
    listed = CliRunner().invoke(cli, ["failures", "list"], env=env)
    assert listed.exit_code == 0
    assert "issuers no setting places: 'HOSP-B' (1)" in listed.stdout
    assert """DICOMCAST_ISSUER_SYSTEMS='{"HOSP-B": "urn:oid:<its OID>"}'""" in listed.stdout


def test_mapping_the_issuer_and_retrying_writes_a_second_patient(tmp_path: Path) -> None:
    fhir = FakeFhir()
    source = two_hospitals()
    worker = fake_worker(tmp_path, fhir, source, once_max_wait=0)
    try:
        worker.run_once()
    finally:
        worker.close()
        worker.app.close()
    env = {"DICOMCAST_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"}
    retried = CliRunner().invoke(cli, ["failures", "retry", "--all"], env=env)
    assert retried.exit_code == 0, retried.stdout
    issuers = {**DEMO_ISSUERS, "HOSP-B": "urn:oid:1.2.826.0.1.3680043.8.498.99"}
    worker = fake_worker(tmp_path, fhir, source, issuer_systems=issuers, once_max_wait=0)
    try:
        worker.run_once()
        assert worker.store.failures("default") == []
    finally:
        worker.close()
        worker.app.close()
    systems = sorted(p["identifier"][0]["system"] for p in fhir.resources["Patient"].values())
    assert systems == sorted(issuers.values())  # two Patients, one per issuer


def test_the_old_fallback_is_a_choice_with_a_warning(tmp_path: Path) -> None:
    fhir = FakeFhir()
    worker = fake_worker(
        tmp_path, fhir, two_hospitals(), unknown_issuer="default-system", once_max_wait=0
    )
    try:
        worker.run_once()
        assert worker.store.failures("default") == []
    finally:
        worker.close()
        worker.app.close()
    systems = sorted(p["identifier"][0]["system"] for p in fhir.resources["Patient"].values())
    assert systems == sorted([DEMO_ISSUERS["HOSP-A"], "urn:oid:1.2.3"])


def test_derived_systems_keep_issuers_apart(tmp_path: Path) -> None:
    fhir = FakeFhir()
    base = "https://hospital.example/sid/issuer/"
    worker = fake_worker(
        tmp_path,
        fhir,
        two_hospitals(),
        unknown_issuer="derive",
        issuer_system_base=base,
        once_max_wait=0,
    )
    try:
        worker.run_once()
    finally:
        worker.close()
        worker.app.close()
    systems = sorted(p["identifier"][0]["system"] for p in fhir.resources["Patient"].values())
    assert systems == sorted([DEMO_ISSUERS["HOSP-A"], base + "HOSP-B"])
