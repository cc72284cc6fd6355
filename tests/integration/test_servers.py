"""The code that starts servers for the demo, the bench and the tests stops what it started
on every path, a failed start of the other server included."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from dicomcast.sandbox.servers import FhirServer, OrthancServer, free_port

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


def test_a_port_taken_between_choosing_it_and_starting_is_chosen_again(tmp_path: Path) -> None:
    """Seen with the suite on four processes: another process's server bound the port
    `free_port` had just handed out, and Orthanc exited. A first start tries other ports;
    a restart keeps its own (tests hold its URLs)."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        orthanc, fhir = OrthancServer(tmp_path / "orthanc"), FhirServer(tmp_path / "fhir")
        orthanc.dicom_port, fhir.port = taken, taken
        with orthanc, fhir:
            assert taken not in (orthanc.dicom_port, fhir.port)
            with httpx.Client() as client:
                assert client.get(f"{orthanc.url}/system").status_code == 200
                assert client.get(f"{fhir.url}/metadata").status_code == 200
            orthanc.stop()
            kept = orthanc.dicom_port
            orthanc.start()
            assert orthanc.dicom_port == kept
    assert all(free_port() not in range(32768, 61000) for _ in range(20))
