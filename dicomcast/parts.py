"""The parts a worker is made of, built by `dicomcast.app` (the composition root) from
settings, or by tests from fakes. A plain container: it builds nothing itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dicomcast.config import Settings
from dicomcast.fhir.client import FhirClient
from dicomcast.fhir.upsert import FhirWriter
from dicomcast.mapping.mapper import Mappings
from dicomcast.ops.metrics import Metrics
from dicomcast.sources.base import Source
from dicomcast.state.store import StateStore

if TYPE_CHECKING:
    from dicomcast.sources.dimse.listener import StoreListener


@dataclass
class App:
    settings: Settings
    store: StateStore
    sources: dict[str, Source]  # in priority order
    mappings: Mappings
    fhir: FhirClient
    writer: FhirWriter
    metrics: Metrics
    # C-STORE listeners of DIMSE sources in push mode: started by `run`, stopped with it.
    listeners: list[StoreListener] = field(default_factory=list)

    @property
    def source(self) -> Source:
        """The first source: the only one in a single-source setup."""
        return next(iter(self.sources.values()))

    def close(self) -> None:
        for listener in self.listeners:
            listener.stop()
        for source in self.sources.values():
            source.close()
        self.fhir.close()
        self.store.close()
