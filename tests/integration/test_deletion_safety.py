"""Deletions only on proof, and only within the budget, against the real Orthanc and FHIR
server: an Orthanc that lost its DICOMweb plugin deletes nothing, and a mass deletion past
`DELETE_BUDGET` is held for an operator."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from dicomcast.config import Settings
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.samples import bulk_studies, demo_studies, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer, free_port
from dicomcast.worker import Worker
from tests.conftest import dicomcast_cli
from tests.integration.fhir_state import all_resources
from tests.integration.test_operations import probe, wait_for

pytestmark = pytest.mark.integration
Sync = Callable[..., tuple[int, Worker]]


def test_an_orthanc_without_its_dicomweb_plugin_deletes_nothing_and_is_not_ready(
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    sync_once: Sync,
) -> None:
    specs = demo_studies()[:3]
    for spec in specs:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    assert sync_once()[0] == 0
    before = {r["id"] for r in all_resources(fhir, "ImagingStudy")}
    observations = len(all_resources(fhir, "Observation"))
    assert len(before) == 3

    orthanc.stop()  # an upgrade, a config that lost `Plugins`: REST answers, DICOMweb does not
    orthanc.dicomweb = False
    orthanc.start()
    settings = make_settings(once_max_wait=0)
    resync = dicomcast_cli(settings, "resync", specs[0].study_uid)
    assert resync.returncode == 0, resync.stderr
    code, worker = sync_once(once_max_wait=0)
    assert code == 1
    assert worker.totals["deleted"] == 0
    assert {r["id"] for r in all_resources(fhir, "ImagingStudy")} == before
    assert len(all_resources(fhir, "Observation")) == observations
    pause = worker.source_pause("default")
    assert pause.reason is not None and "DICOMweb plugin" in pause.reason

    checked = dicomcast_cli(settings, "check-config")
    assert checked.returncode != 0
    assert "DICOMweb plugin" in checked.stdout + checked.stderr

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomcast", "run"],
        env=env_for(make_settings(http_port=port, poll_interval=0.3)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for("the listener", lambda: probe(base, "/livez")[0] == 200)
        wait_for(
            "a readiness report", lambda: "source:default" in json.dumps(probe(base, "/readyz")[1])
        )
        status, report = probe(base, "/readyz")
        assert status == 503, report
    finally:
        proc.terminate()
        proc.wait(30)
    assert {r["id"] for r in all_resources(fhir, "ImagingStudy")} == before


def delete_studies(orthanc: OrthancServer, uids: list[str]) -> None:
    with orthanc.client() as http:
        for uid in uids:
            study_id = http.post("/tools/lookup", content=uid).json()[0]["ID"]
            http.delete(f"/studies/{study_id}").raise_for_status()


def test_a_mass_deletion_past_the_budget_is_held_until_an_operator_decides(
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    sync_once: Sync,
) -> None:
    specs = bulk_studies(40, 1, patients=5, prefix="gone", series=1)
    with orthanc.client() as http:
        for spec in specs:
            for ds in instances(spec):
                http.post("/instances", content=to_bytes(ds)).raise_for_status()
    assert sync_once(delete_budget=10)[0] == 0
    assert len(all_resources(fhir, "ImagingStudy")) == 40

    gone = [s.study_uid for s in specs[:30]]
    delete_studies(orthanc, gone)
    code, worker = sync_once(delete_budget=10)
    assert code == 1  # held deletions wait for an operator
    assert worker.totals["deleted"] == 10 and worker.totals["held"] == 20
    assert len(all_resources(fhir, "ImagingStudy")) == 30

    settings = make_settings(delete_budget=10)
    listed = dicomcast_cli(settings, "deletions", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    held = json.loads(listed.stdout)
    assert len(held) == 20 and {h["study_uid"] for h in held} <= set(gone)
    kept_uid = held[0]["study_uid"]
    rejected = dicomcast_cli(settings, "deletions", "reject", kept_uid)
    assert rejected.returncode == 0, rejected.stderr
    approved = dicomcast_cli(settings, "deletions", "approve", "--all")
    assert approved.returncode == 0 and "19 deletions approved" in approved.stdout

    code, worker = sync_once(delete_budget=10)
    assert worker.totals["deleted"] == 19
    left = {
        i["value"].removeprefix("urn:oid:")
        for r in all_resources(fhir, "ImagingStudy")
        for i in r["identifier"]
        if i.get("system") == "urn:dicom:uid"
    }
    assert left == {s.study_uid for s in specs[30:]} | {kept_uid}
    assert code == 0  # nothing held, failed or waiting: the rejected one is kept on purpose

    # The kept study is not found "vanished" again by the next scans.
    code, worker = sync_once(delete_budget=10)
    assert code == 0 and worker.totals["deleted"] == 0 and worker.totals["held"] == 0
    status = json.loads(dicomcast_cli(settings, "status", "--json").stdout)["sources"][0]
    assert status["deletions"] == {"held": 0, "kept": 1}
    assert httpx.get(f"{orthanc.url}/studies").json() and len(left) == 11
