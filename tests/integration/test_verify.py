"""`dicomcast verify` against the real Orthanc and FHIR server: drift made by hand in FHIR
(a deleted, an edited and a dangling ImagingStudy) and in the archive (a study deleted
while no worker ran) is found, and `--fix` has the worker repair it."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from dicomcast.config import Settings
from dicomcast.sandbox.samples import demo_studies, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.worker import Worker
from tests.conftest import dicomcast_cli
from tests.integration.test_deletion_safety import delete_studies

pytestmark = pytest.mark.integration
Sync = Callable[..., tuple[int, Worker]]


def verify(settings: Settings, *args: str) -> tuple[int, dict[str, str]]:
    done = dicomcast_cli(settings, "verify", "--json", *args)
    assert done.returncode in (0, 1), done.stderr
    found = json.loads(done.stdout)["drift"]
    return done.returncode, {d["study_uid"]: d["kind"] for d in found}


def test_verify_finds_drift_on_either_side_and_fix_repairs_it(
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    sync_once: Sync,
) -> None:
    specs = demo_studies()[:5]
    for spec in specs:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    assert sync_once()[0] == 0
    settings = make_settings()
    assert verify(settings) == (0, {})

    deleted, edited, dangling, gone = specs[0], specs[1], specs[2], specs[3]
    with fhir.client() as http:

        def study_of(uid: str) -> dict[str, object]:
            bundle = http.get(f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{uid}").json()
            return dict(bundle["entry"][0]["resource"])

        # The observations of the deleted study go first (they point at it).
        first = study_of(deleted.study_uid)
        for entry in (
            http.get(f"Observation?part-of=ImagingStudy/{first['id']}").json().get("entry", [])
        ):
            http.delete(f"Observation/{entry['resource']['id']}").raise_for_status()
        http.delete(f"ImagingStudy/{first['id']}").raise_for_status()
        second = study_of(edited.study_uid)
        http.put(f"ImagingStudy/{second['id']}", json={**second, "numberOfInstances": 999})
        third = study_of(dangling.study_uid)
        http.put(
            f"ImagingStudy/{third['id']}",
            json={**third, "subject": {"reference": "Patient/never-existed"}},
        ).raise_for_status()
    delete_studies(orthanc, [gone.study_uid])  # no worker runs: FHIR still has it

    code, found = verify(settings)
    assert code == 1
    assert found == {
        deleted.study_uid: "missing",
        edited.study_uid: "stale",
        dangling.study_uid: "dangling",
        gone.study_uid: "extra",
    }
    code, _ = verify(settings, "--fix")
    assert code == 1  # what it found; the workers repair it
    assert sync_once()[0] == 0
    assert verify(settings) == (0, {})
