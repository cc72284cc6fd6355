"""Bad input and crashes against the real servers: no crash, nothing lost, nothing doubled."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest

from dicomcast.config import Settings
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.samples import bulk_studies, demo_studies, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.state.store import StateStore
from dicomcast.worker import Worker
from tests.conftest import run_once_cli
from tests.integration.fhir_state import all_resources, duplicates, first_identifier

pytestmark = pytest.mark.integration
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def test_pydicom_corpus_never_crashes_and_good_studies_still_sync(
    orthanc: OrthancServer,
    fhir: FhirServer,
    sync_once: Callable[..., tuple[int, Worker]],
) -> None:
    accepted = 0
    with orthanc.client() as http:
        for path in sorted(PYDICOM_FILES.rglob("*")):
            if path.is_file():
                response = http.post("/instances", content=path.read_bytes())
                accepted += response.status_code == 200
    good = demo_studies()[:2]
    for spec in good:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    assert accepted > 20  # the corpus really reached the worker

    code, worker = sync_once()
    store = worker.app.store
    rows = store.failures("default")
    failed = [r for r in rows if r.status == "failed"]
    # Every refusal is recorded with a reason an operator can read; none is a crash.
    assert all(r.last_error and r.error_kind != "InternalError" for r in failed), [
        (r.study_uid, r.error_kind, r.last_error) for r in failed
    ]
    assert code == (1 if failed else 0)
    assert failed  # the corpus holds studies that must be refused (no PatientID, bad UIDs)
    assert store.failure_kinds("default") == Counter(r.error_kind for r in failed)
    counts = store.counts("default")
    assert counts.get("dirty", 0) == 0
    uids = {r["identifier"][0]["value"] for r in all_resources(fhir, "ImagingStudy")}
    for spec in good:
        assert f"urn:oid:{spec.study_uid}" in uids
    assert counts.get("clean", 0) >= len(good) + 10


def test_kill_9_at_random_moments_loses_nothing_and_duplicates_nothing(
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
) -> None:
    total, batches = 240, 12
    specs = bulk_studies(total, 2, patients=30, prefix="crash")
    settings = make_settings(concurrency=4, poll_interval=0.2)
    env = env_for(settings)
    rng = random.Random(7)
    kills = 0
    step = total // batches
    for batch in range(0, total, step):
        for spec in specs[batch : batch + step]:
            orthanc.upload([to_bytes(ds) for ds in instances(spec)])
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicomcast", "run"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.4, 2.5))  # start-up, tailing, mid-transaction, idle: any
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        kills += 1
    assert kills == batches
    final = run_once_cli(env, timeout=300)
    assert final.returncode == 0, final.stderr[-2000:]

    assert duplicates(fhir) == {}  # every identifier resolves to exactly one resource
    studies = {first_identifier(s): s for s in all_resources(fhir, "ImagingStudy")}
    patients = {
        f"Patient/{p['id']}": p["identifier"][0]["value"] for p in all_resources(fhir, "Patient")
    }
    assert len(studies) == total and len(patients) == 30
    for spec in specs:  # the right content, attached to the right patient
        study = studies[f"urn:dicom:uid|urn:oid:{spec.study_uid}"]
        assert (study["numberOfSeries"], study["numberOfInstances"]) == (2, 2)
        assert patients[study["subject"]["reference"]] == spec.patient_id
    store = StateStore(settings.state_url)
    try:
        assert store.counts("default") == {"clean": total}  # nothing left dirty
    finally:
        store.close()


def test_sigterm_stops_the_long_running_worker_cleanly(
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
) -> None:
    orthanc.upload([to_bytes(ds) for ds in instances(demo_studies()[2])])
    env = env_for(make_settings(poll_interval=0.2))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomcast", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all_resources(fhir, "ImagingStudy"):
        time.sleep(0.2)
    assert len(all_resources(fhir, "ImagingStudy")) == 1  # synced within seconds
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    with httpx.Client() as http:
        assert http.get(f"{orthanc.url}/system").status_code == 200


def test_logs_carry_no_patient_data_by_default(
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
) -> None:
    specs = demo_studies()
    for spec in specs:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    env = env_for(make_settings(log_level="DEBUG", log_format="json"))
    done = run_once_cli(env, timeout=120)
    logs = done.stderr
    assert '"study_uid": "1.2.826.0.1.3680043.8.498.' in logs  # logs do say which study
    # The invalid birth date 19750229 is quoted in a warning: it must not reach the log.
    for spec in specs:
        family = spec.patient_name.split("^")[0]
        for secret in (spec.patient_id, family, spec.birth_date):
            assert secret not in logs, secret


def test_ctrl_c_during_run_once_says_how_far_it_got_and_that_nothing_is_lost(
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
) -> None:
    """It printed nothing and exited 130."""
    specs = bulk_studies(40, 2, patients=4, prefix="ctrlc", series=1)
    for spec in specs:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    settings = make_settings(concurrency=1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomcast", "run", "--once"],
        env=env_for(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(all_resources(fhir, "ImagingStudy")) < 3:  # under way
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("dicomcast: interrupted: ") and last.endswith(
        f"of {len(specs)} studies done; run again to finish (the rest wait in the state DB, "
        "nothing is lost)"
    ), stderr[-2000:]
    done = int(last.split("interrupted: ")[1].split(" of ")[0])
    assert 3 <= done < len(specs)
    assert run_once_cli(env_for(settings), timeout=120).returncode == 0  # and it finishes
    assert len(all_resources(fhir, "ImagingStudy")) == len(specs)
