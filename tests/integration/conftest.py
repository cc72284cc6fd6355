"""Fixtures the DIMSE tests share: a port for dicomcast's listener, and Orthanc as a PACS
that knows that listener as a modality it can route to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomcast.sandbox.servers import OrthancServer, free_port


@pytest.fixture
def listener_port() -> int:
    return free_port()


@pytest.fixture
def pacs(tmp_path: Path, listener_port: int) -> Iterator[OrthancServer]:
    """Orthanc as a PACS that knows dicomcast's listener as the modality `dicomcast`."""
    server = OrthancServer(
        tmp_path / "pacs", modalities={"dicomcast": ["DICOMCAST", "127.0.0.1", listener_port]}
    ).start()
    yield server
    server.discard()
