"""Shared fixtures. Integration fixtures start a real Orthanc and a real sekmet-fhir per test,
on free ports with fresh folders, and stop them afterwards."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomcast.app import build_app
from dicomcast.config import Settings, load_settings
from dicomcast.sandbox.samples import DEMO_ISSUERS, DEMO_PATIENT_SYSTEM
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.worker import Worker
from tests.sigv4 import aws_environment  # noqa: F401  (a fixture, for every test)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's own DICOMCAST_* variables must not leak into the tests."""
    for name in list(os.environ):
        if name.startswith("DICOMCAST_") and name not in (
            "DICOMCAST_SEKMET",
            "DICOMCAST_ORTHANC_BIN",
        ):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """CLI tests install handlers on streams that close with the test; take them away."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path / "orthanc").start()
    yield server
    server.discard()


@pytest.fixture
def fhir(tmp_path: Path) -> Iterator[FhirServer]:
    server = FhirServer(tmp_path / "fhir").start()
    yield server
    server.stop()


@pytest.fixture
def make_settings(
    orthanc: OrthancServer, fhir: FhirServer, tmp_path: Path
) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "source_url": orthanc.url,
            "fhir_url": fhir.url,
            "state_url": f"sqlite:///{tmp_path / 'state.db'}",
            "patient_id_system": DEMO_PATIENT_SYSTEM,
            "issuer_systems": DEMO_ISSUERS,
            "timezone": "Europe/Berlin",
            "backoff_base": 0.1,
            "http_port": 0,  # tests that want the listener ask for a free port
        }
        values.update(overrides)
        return load_settings(None, **values)

    return make


@pytest.fixture
def sync_once(make_settings: Callable[..., Settings]) -> Callable[..., tuple[int, Worker]]:
    """Run `run --once` in-process; returns (exit code, the worker for its counters)."""

    def run(**overrides: Any) -> tuple[int, Worker]:
        app = build_app(make_settings(**overrides))
        worker = Worker(app)
        try:
            code = worker.run_once()
        finally:
            worker.close()
            app.close()
        return code, worker

    return run


def settings_for(fhir: FhirServer, tmp_path: Path, sources: list[dict[str, Any]]) -> Settings:
    """Settings for several sources (a `sources` list) writing into `fhir`."""
    return load_settings(
        None,
        sources=sources,
        fhir_url=fhir.url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        patient_id_system=DEMO_PATIENT_SYSTEM,
        issuer_systems=DEMO_ISSUERS,
        backoff_base=0.1,
        http_retry_base=0.05,
        http_port=0,
    )


def run_once_cli(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`dicomcast run --once` as its own process, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "dicomcast", "run", "--once"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def dicomcast_cli(
    settings: Settings, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """One `dicomcast` command as its own process, with these settings, output captured."""
    from dicomcast.sandbox.environment import env_for

    return subprocess.run(
        [sys.executable, "-m", "dicomcast", *args],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
