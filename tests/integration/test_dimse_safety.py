"""A PACS polled over DIMSE (Orthanc's DICOM port, for real) with studies that do not map:
`run --once` ends, the PACS is asked a bounded number of times, a value the REST source
tolerates is tolerated from C-FIND too, and no logger prints patient data."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from dicomcast.config import Settings
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.samples import SeriesSpec, StudySpec, demo_studies, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.sources.dimse.source import DimseSource
from dicomcast.worker import Worker
from tests.conftest import run_once_cli
from tests.integration.fhir_state import all_resources
from tests.integration.test_dimse import dimse

pytestmark = pytest.mark.integration
Sync = Callable[..., tuple[int, Worker]]


def odd_series_number() -> list[bytes]:
    """A CT study whose SeriesNumber is `1A` (not an IS): Orthanc stores it as it came."""
    spec = StudySpec(
        key="odd-series",
        patient_id="ODD1",
        patient_name="Oddity^Series",
        issuer="HOSP-A",
        series=[SeriesSpec("CT", 2)],
    )
    payloads = []
    for ds in instances(spec):
        ds[0x00200011] = RawDataElement(Tag(0x00200011), "IS", 2, b"1A", 0, True, True)
        payloads.append(to_bytes(ds))
    return payloads


def unknown_issuer() -> list[bytes]:
    """A study whose patient ID comes from an issuer no setting places: it is parked."""
    spec = StudySpec(
        key="unplaced",
        patient_id="NOWHERE7",
        patient_name="Nowhere^Person",
        birth_date="19420607",
        issuer="HOSP-UNKNOWN",
        series=[SeriesSpec("MR", 1)],
    )
    return [to_bytes(ds) for ds in instances(spec)]


def test_a_study_that_fails_every_time_does_not_keep_run_once_asking_the_pacs(
    orthanc: OrthancServer, fhir: FhirServer, sync_once: Sync
) -> None:
    orthanc.upload(odd_series_number())
    orthanc.upload(unknown_issuer())
    orthanc.upload([to_bytes(ds) for ds in instances(demo_studies()[0])])
    started = time.monotonic()
    code, worker = sync_once(**dimse(orthanc))
    assert time.monotonic() - started < 60
    assert code == 1  # the unplaced study is parked, for an operator
    source = worker.app.source
    assert isinstance(source, DimseSource) and source.peer is not None
    assert source.peer.opened < 50 and source.peer.opened == source.peer.closed
    assert worker.totals["synced"] == 2 and worker.totals["failed"] == 1
    series_numbers = [
        s.get("number") for r in all_resources(fhir, "ImagingStudy") for s in r["series"]
    ]
    assert len(series_numbers) >= 2  # the odd study landed, its series without a number
    # The next run finds the parked study unchanged: no attempt, no C-FIND of its own;
    # only the listings (the feed's, the scan's, and the last look before it ends).
    code, worker = sync_once(**dimse(orthanc))
    assert worker.totals["failed"] == 0 and worker.totals["synced"] == 0
    assert worker.app.source.peer.opened <= 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_no_logger_prints_patient_data_from_a_dimse_run(
    orthanc: OrthancServer,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    level: str,
) -> None:
    specs = demo_studies()
    for spec in specs:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    orthanc.upload(odd_series_number())
    orthanc.upload(unknown_issuer())
    settings = make_settings(log_level=level, log_format="text", **dimse(orthanc))
    done = run_once_cli(env_for(settings), timeout=120)
    logs = done.stdout + done.stderr
    assert "study synced" in logs  # it did log, and it did sync
    secrets = {"NOWHERE7", "Nowhere", "19420607", "ODD1", "Oddity"}
    for spec in specs:
        secrets |= {spec.patient_id, spec.patient_name.split("^")[0]}
        if spec.birth_date:
            secrets.add(spec.birth_date)
    for secret in sorted(secrets):
        assert secret not in logs, f"{secret} in the {level} log"
    assert not re.search(r"\(0010,00[0-9A-F]{2}\)", logs)  # no dumped patient element
