"""A worker writing into a real FHIR server (sekmet) behind an EHR-like gateway that admits
only SMART Backend Services tokens: short-lived tokens expiring between syncs, a token
revoked mid-run, a key rotation, and `check-config` naming all of it first."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from dicomcast.app import build_app
from dicomcast.auth.smart import generate_key, public_jwks
from dicomcast.config import Settings
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.samples import StudySpec, bulk_studies, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.worker import Worker
from tests.integration.fhir_state import all_resources, duplicates
from tests.smart_ehr import CLIENT, EhrGateway

pytestmark = pytest.mark.integration
LIFETIME = 2  # seconds a token lives: several expire during the test


OLD, NEW = generate_key("RS384"), generate_key("ES384")
OLD_JWKS, NEW_JWKS = public_jwks(OLD, "k-2025"), public_jwks(NEW, "k-2026")


@pytest.fixture
def ehr(fhir: FhirServer) -> Iterator[EhrGateway]:
    """The EHR, with dicomcast registered by the old key's JWKS."""
    with EhrGateway(fhir.url, OLD_JWKS, lifetime=LIFETIME) as gateway:
        yield gateway


def check_config(settings: Settings) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dicomcast", "check-config"],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    (line,) = [x for x in done.stdout.splitlines() if x.startswith("fhir ")]
    return line.removeprefix("fhir").lstrip()


def sync(settings: Settings, orthanc: OrthancServer, batches: list[list[StudySpec]]) -> Worker:
    """One long-lived worker syncing each batch as it arrives, a token lifetime apart."""
    app = build_app(settings)
    worker = Worker(app)
    try:
        for batch in batches:
            for spec in batch:
                orthanc.upload([to_bytes(ds) for ds in instances(spec)])
            assert worker.run_once() == 0
            time.sleep(LIFETIME + 0.5)  # the token dies before the next batch
    finally:
        worker.close()
        app.close()
    return worker


def test_a_worker_behind_an_ehr_renews_tokens_and_survives_a_key_rotation(
    orthanc: OrthancServer,
    fhir: FhirServer,
    ehr: EhrGateway,
    make_settings: Callable[..., Settings],
) -> None:
    login = {"fhir_url": ehr.fhir_url, "fhir_client_id": CLIENT}
    with_old = make_settings(**login, fhir_private_key=OLD, fhir_key_id="k-2025")
    said = check_config(with_old)
    assert said.startswith(
        "ok (FHIR 4.0.1; login: SMART Backend Services (RS384, kid k-2025), "
        f"token URL {ehr.auth.token_url}; granted: system/Patient.crus"
    ), said
    assert "writes: transaction Bundles" in said

    specs = bulk_studies(9, 2, patients=3, prefix="ehr")
    worker = sync(with_old, orthanc, [specs[0:2], specs[2:4]])
    assert worker.totals["synced"] == 4
    first_run = len(ehr.auth.assertions)
    assert first_run >= 2  # the expired token was replaced by a fresh assertion

    # Revoked before it expires: the next request gets a 401, then one fresh token.
    app = build_app(with_old)
    revoked = Worker(app)
    try:
        orthanc.upload([to_bytes(ds) for ds in instances(specs[4])])
        assert revoked.run_once() == 0
        refused = ehr.refused
        ehr.auth.tokens.clear()
        orthanc.upload([to_bytes(ds) for ds in instances(specs[5])])
        assert revoked.run_once() == 0
        assert ehr.refused == refused + 1 and revoked.totals["synced"] == 2
    finally:
        revoked.close()
        app.close()

    # Rotation: the EHR holds both keys while the worker restarts on the new one, then
    # drops the old one; a worker still on the old key is refused, and says why.
    ehr.auth.register({"keys": OLD_JWKS["keys"] + NEW_JWKS["keys"]})
    with_new = make_settings(**login, fhir_private_key=NEW, fhir_key_id="k-2026")
    sync(with_new, orthanc, [specs[6:8]])
    ehr.auth.register(NEW_JWKS)
    sync(with_new, orthanc, [specs[8:]])
    assert {a["header"]["kid"] for a in ehr.auth.assertions} == {"k-2025", "k-2026"}
    assert "token endpoint answered 401 invalid_client" in check_config(with_old)

    studies = all_resources(fhir, "ImagingStudy")
    assert len(studies) == 9 and len(all_resources(fhir, "Patient")) == 3
    assert duplicates(fhir) == {}
