"""Fixtures of the unit tests: whole `run --once` runs on the in-memory fakes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicomcast.app import build_app
from dicomcast.config import load_settings
from dicomcast.sandbox.samples import DEMO_ISSUERS
from dicomcast.worker import Worker
from tests.fakes import FakeSource
from tests.fhir_fake import FakeFhir

SETTINGS: dict[str, Any] = {
    "fhir_url": "http://fhir.test/fhir",
    "patient_id_system": "urn:oid:1.2.3",
    "issuer_systems": DEMO_ISSUERS,
    "http_retries": 1,
    "backoff_base": 0.05,
    "backoff_max": 0.2,
    "max_attempts": 2,
    "once_max_wait": 0,
    "http_port": 0,
}


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Any]:
    """`run(fhir, *sources, **settings)`: one `run --once` with a fresh Worker; returns
    (exit code, worker). Sources and state persist between calls of one test."""
    workers: list[Worker] = []

    def once(fhir: FakeFhir, *sources: FakeSource, **overrides: Any) -> tuple[int, Worker]:
        values = {**SETTINGS, "state_url": f"sqlite:///{tmp_path / 'state.db'}", **overrides}
        if len(sources) == 1:
            values["source_url"] = "http://dicom.test"
        else:
            values["sources"] = [{"name": s.name, "url": f"http://{s.name}.test"} for s in sources]
        app = build_app(load_settings(None, **values), sources=list(sources), fhir_transport=fhir)
        worker = Worker(app)
        workers.append(worker)
        return worker.run_once(), worker

    yield once
    for worker in workers:
        worker.close()
        worker.app.close()
