"""The worker's own verify (DICOMCAST_VERIFY_INTERVAL) on the in-memory fakes: drift by
kind as gauges, 0 for the kinds not found."""

from __future__ import annotations

from typing import Any

from dicomcast import runner
from tests.fakes import FakeSource, studies
from tests.fhir_fake import FakeFhir


def test_the_workers_verify_exports_drift_by_kind(run: Any) -> None:
    fhir, source = FakeFhir(), FakeSource(studies(3))
    code, worker = run(fhir, source)
    assert code == 0
    study = fhir.all("ImagingStudy")[0]
    fhir.resources["ImagingStudy"].pop(study["id"])  # deleted by hand in FHIR
    assert worker.hold_source()
    runner.verify(worker)
    registry = worker.metrics.registry

    def drift(kind: str) -> float | None:
        value = registry.get_sample_value(
            "dicomcast_drift_studies", {"source": "default", "kind": kind}
        )
        return None if value is None else float(value)

    assert drift("missing") == 1.0
    assert drift("stale") == drift("extra") == drift("dangling") == drift("duplicate") == 0.0
