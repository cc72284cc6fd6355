"""The code that starts servers for the demo, the bench and the tests stops what it started
on every path, a failed start of the other server included."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomcast.sandbox.servers import FhirServer, OrthancServer

pytestmark = pytest.mark.integration


def test_a_fhir_server_that_fails_to_start_leaves_no_orthanc_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOMCAST_SEKMET", "/bin/false")  # exits at once
    started: list[OrthancServer] = []
    with (
        pytest.raises(RuntimeError, match="sekmet-fhir exited"),
        OrthancServer(tmp_path / "orthanc") as orthanc,
    ):
        started.append(orthanc)
        FhirServer(tmp_path / "fhir").start()
    (orthanc,) = started
    assert orthanc.proc is not None and orthanc.proc.poll() is not None  # stopped
