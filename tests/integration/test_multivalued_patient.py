"""A study whose PatientID has two values (`A\\B`) names no one patient: the real Orthanc
(REST source) and dcmtk pushing to the real listener both park it with the reason, and
nothing of it reaches FHIR under either value."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dicomcast.config import Settings
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.samples import SeriesSpec, StudySpec, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer, free_port
from dicomcast.state.store import StateStore
from dicomcast.worker import Worker
from tests.integration.fhir_state import all_resources
from tests.integration.test_dimse import push_settings, start_worker, storescu

pytestmark = pytest.mark.integration
Sync = Callable[..., tuple[int, Worker]]
REASON = "PatientID has 2 values"


def two_patient_study() -> StudySpec:
    return StudySpec(
        key="two-ids",
        patient_id="MV1\\MV2",
        patient_name="Two^Ids",
        issuer="HOSP-A",
        series=[SeriesSpec("CT", 2)],
    )


def test_the_orthanc_source_parks_a_study_with_two_patient_ids(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    spec = two_patient_study()
    orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    _, worker = sync_once()
    [failure] = worker.app.store.failures("default")
    assert failure.status == "failed" and REASON in str(failure.last_error)
    assert worker.totals.get("deleted", 0) == 0
    assert all_resources(fhir, "ImagingStudy") == [] and all_resources(fhir, "Patient") == []


def test_a_pushed_study_with_two_patient_ids_is_parked_not_filed_under_the_first(
    fhir: FhirServer, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    files = tmp_path / "files"
    files.mkdir()
    for n, ds in enumerate(instances(two_patient_study())):
        (files / f"{n}.dcm").write_bytes(to_bytes(ds))
    settings = push_settings(make_settings, port)
    worker = start_worker(settings, tmp_path / "worker.log")
    store = StateStore(env_for(settings)["DICOMCAST_STATE_URL"])
    try:
        assert storescu(port, files).returncode == 0
        deadline = time.monotonic() + 60
        while not store.failures("default"):
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-2000:]
            time.sleep(0.2)
        [failure] = store.failures("default")
        assert REASON in str(failure.last_error)
        assert all_resources(fhir, "Patient") == []
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        store.close()
