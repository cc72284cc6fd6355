"""Build the worker's parts from settings, in one place, for the CLI and the tests alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from dicomcast.config import Settings
from dicomcast.fhir.client import FhirClient
from dicomcast.fhir.upsert import FhirWriter
from dicomcast.mapping.mapper import Mappings
from dicomcast.ops.metrics import Metrics
from dicomcast.sources.base import Source
from dicomcast.sources.orthanc import OrthancSource
from dicomcast.state.store import StateStore

MAPPING_CONFIG_KEYS = {
    "patient_id_system",
    "accession_system",
    "issuer_systems",
    "timezone",
    "source_name",
    "source_public_url",
}


def mapping_config(settings: Settings) -> dict[str, Any]:
    """The settings a mapping file may read with `config:`; never a secret."""
    public_url = settings.source.public_url if settings.source_url else settings.source_public_url
    return {
        "patient_id_system": settings.patient_id_system,
        "accession_system": settings.accession_system,
        "issuer_systems": dict(settings.issuer_systems),
        "timezone": settings.timezone,
        "source_name": settings.source_name,
        "source_public_url": public_url,
    }


def load_mappings(settings: Settings) -> Mappings:
    return Mappings.load(settings.mapping_dir, MAPPING_CONFIG_KEYS)


def make_source(settings: Settings, transport: httpx.BaseTransport | None = None) -> Source:
    verify: bool | str = str(settings.ca_bundle) if settings.ca_bundle else settings.verify_tls
    return OrthancSource(
        settings.source,
        verify=verify,
        timeout=settings.http_timeout,
        transport=transport,
        retry=settings.retry_policy,
    )


@dataclass
class App:
    settings: Settings
    store: StateStore
    source: Source
    mappings: Mappings
    fhir: FhirClient
    writer: FhirWriter
    metrics: Metrics

    def close(self) -> None:
        self.source.close()
        self.fhir.close()
        self.store.close()


def build_app(
    settings: Settings,
    *,
    source: Source | None = None,
    fhir_transport: httpx.BaseTransport | None = None,
    metrics: Metrics | None = None,
) -> App:
    """Validate settings, compile mappings, migrate the state DB: every fatal check up front."""
    settings.require_worker_settings()
    mappings = load_mappings(settings)
    store = StateStore(settings.state_url)
    store.migrate()
    fhir = FhirClient.from_settings(settings, transport=fhir_transport)
    writer = FhirWriter(
        fhir,
        patient_owned=mappings.owned("Patient"),
        study_owned=mappings.owned("ImagingStudy"),
        patient_policy=settings.patient_policy,
        deleted_policy=settings.deleted_study_policy,
        max_entries=settings.transaction_max_entries,
    )
    metrics = metrics or Metrics()
    fhir.observe = metrics.observe_fhir
    source = source or make_source(settings)
    name = source.name
    source.observe = lambda status, _seconds: metrics.observe_source(name, status)
    source.keep_tags = mappings.tags_read()
    metrics.watch_state(store, lambda: [name])
    return App(settings, store, source, mappings, fhir, writer, metrics)
