"""Never put two issuers' patients in one namespace: a patient ID whose issuer no setting
places parks its study (by default) with a reason that says the fix; other studies go on."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from dicomcast.cli import app as cli
from dicomcast.sandbox.samples import DEMO_ISSUERS, bulk_studies
from dicomcast.state.models import StudyRow
from tests.fakes import FakeSource, dicom_json, fake_worker
from tests.fhir_fake import FakeFhir


def two_hospitals() -> FakeSource:
    """Patient `SAFE0` of HOSP-A (mapped) and patient `SAFE0` of HOSP-B (not mapped)."""
    a, b = bulk_studies(2, 2, patients=1, prefix="safe")
    b = dataclasses.replace(b, issuer="HOSP-B")
    return FakeSource({s.study_uid: dicom_json(s) for s in (a, b)})


def sync(tmp_path: Path, fhir: FakeFhir, **settings: Any) -> list[StudyRow]:
    """One `run --once` over the two hospitals' studies; the failures it left."""
    worker = fake_worker(tmp_path, fhir, two_hospitals(), once_max_wait=0, **settings)
    try:
        worker.run_once()
        return worker.store.failures("default")
    finally:
        worker.close()
        worker.app.close()


def patient_systems(fhir: FakeFhir) -> list[str]:
    return sorted(p["identifier"][0]["system"] for p in fhir.resources["Patient"].values())


def cli_run(tmp_path: Path, *args: str) -> Any:
    env = {"DICOMCAST_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}"}
    return CliRunner().invoke(cli, list(args), env=env)


def test_an_unknown_issuer_parks_its_study_and_the_fix_is_listed(tmp_path: Path) -> None:
    fhir = FakeFhir()
    [row] = sync(tmp_path, fhir)
    assert len(fhir.resources["Patient"]) == 1  # HOSP-A's patient only
    assert row.status == "failed" and row.error_kind == "UnknownIssuer"
    assert row.last_error == (
        "unknown issuer of patient ID 'HOSP-B': map it in DICOMCAST_ISSUER_SYSTEMS"
    )
    listed = cli_run(tmp_path, "failures", "list")
    assert listed.exit_code == 0
    assert "issuers no setting places: 'HOSP-B' (1)" in listed.stdout
    assert """DICOMCAST_ISSUER_SYSTEMS='{"HOSP-B": "urn:oid:<its OID>"}'""" in listed.stdout


def test_mapping_the_issuer_and_retrying_writes_a_second_patient(tmp_path: Path) -> None:
    fhir = FakeFhir()
    sync(tmp_path, fhir)
    retried = cli_run(tmp_path, "failures", "retry", "--all")
    assert retried.exit_code == 0, retried.stdout
    issuers = {**DEMO_ISSUERS, "HOSP-B": "urn:oid:1.2.826.0.1.3680043.8.498.99"}
    assert sync(tmp_path, fhir, issuer_systems=issuers) == []
    assert patient_systems(fhir) == sorted(issuers.values())  # two Patients, one per issuer


def test_the_old_fallback_is_a_choice_with_a_warning(tmp_path: Path) -> None:
    fhir = FakeFhir()
    assert sync(tmp_path, fhir, unknown_issuer="default-system") == []
    assert patient_systems(fhir) == sorted([DEMO_ISSUERS["HOSP-A"], "urn:oid:1.2.3"])


def test_derived_systems_keep_issuers_apart(tmp_path: Path) -> None:
    fhir = FakeFhir()
    base = "https://hospital.example/sid/issuer/"
    sync(tmp_path, fhir, unknown_issuer="derive", issuer_system_base=base)
    assert patient_systems(fhir) == sorted([DEMO_ISSUERS["HOSP-A"], base + "HOSP-B"])
