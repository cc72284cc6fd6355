"""Build the worker's parts from settings, in one place, for the CLI and the tests alike."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from dicomcast.config import Settings, SourceSettings
from dicomcast.errors import ConfigError
from dicomcast.fhir.client import FhirClient
from dicomcast.fhir.upsert import FhirWriter
from dicomcast.mapping.mapper import Mappings
from dicomcast.ops.metrics import Metrics
from dicomcast.sources.azure import AzureDicomSource
from dicomcast.sources.base import Source, StudyLocation
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


def mapping_config(
    settings: Settings,
    source: SourceSettings | None = None,
    location: StudyLocation | None = None,
) -> dict[str, Any]:
    """The settings a mapping file may read with `config:`; never a secret. With a source
    and a study's location: that source's overrides and that study's Endpoint."""
    public_url = settings.source_public_url
    if public_url is None and settings.source_url and not settings.sources:
        public_url = settings.source.published_url
    config = {
        "patient_id_system": settings.patient_id_system,
        "accession_system": settings.accession_system,
        "issuer_systems": dict(settings.issuer_systems),
        "timezone": settings.timezone,
        "source_name": settings.source_name,
        "source_public_url": public_url,
    }
    if source is not None:
        config["source_name"] = source.name
        config["source_public_url"] = source.published_url
        for key in ("patient_id_system", "accession_system"):
            if getattr(source, key):
                config[key] = getattr(source, key)
    if location is not None:
        config["source_name"] = location.endpoint_name
        config["source_public_url"] = location.address
    return config


def load_mappings(settings: Settings) -> Mappings:
    return Mappings.load(settings.mapping_dir, MAPPING_CONFIG_KEYS)


def make_source(
    settings: Settings,
    source: SourceSettings | None = None,
    transport: httpx.BaseTransport | None = None,
) -> Source:
    """A client for one configured source (the only one, when not named)."""
    source = source or settings.source
    verify: bool | str = str(settings.ca_bundle) if settings.ca_bundle else settings.verify_tls
    kind = AzureDicomSource if source.kind == "azure-dicom" else OrthancSource
    return kind(
        source,
        verify=verify,
        timeout=settings.http_timeout,
        transport=transport,
        retry=settings.retry_policy,
    )


@dataclass
class App:
    settings: Settings
    store: StateStore
    sources: dict[str, Source]  # in priority order
    mappings: Mappings
    fhir: FhirClient
    writer: FhirWriter
    metrics: Metrics

    @property
    def source(self) -> Source:
        """The first source: the only one in a single-source setup."""
        return next(iter(self.sources.values()))

    def close(self) -> None:
        for source in self.sources.values():
            source.close()
        self.fhir.close()
        self.store.close()


def build_app(
    settings: Settings,
    *,
    source: Source | None = None,
    sources: list[Source] | None = None,
    fhir_transport: httpx.BaseTransport | None = None,
    metrics: Metrics | None = None,
) -> App:
    """Validate settings, compile mappings, migrate the state DB: every fatal check up front.

    `source`/`sources` replace the configured sources' clients (tests pass fakes); they must
    carry the configured names."""
    settings.require_worker_settings()
    configured = settings.source_list()
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
    given = {s.name: s for s in ([source] if source else []) + (sources or [])}
    clients: dict[str, Source] = {}
    for config in configured:
        client = given.pop(config.name, None) or make_source(settings, config)
        client.observe = _counting(metrics, client.name)
        client.keep_tags = mappings.tags_read()
        clients[config.name] = client
    if given:
        raise ConfigError(f"sources given that are not configured: {sorted(given)}")
    names = list(clients)
    metrics.watch_state(store, lambda: names)
    return App(settings, store, clients, mappings, fhir, writer, metrics)


def _counting(metrics: Metrics, name: str) -> Callable[[int | None, float], None]:
    return lambda status, _seconds: metrics.observe_source(name, status)
