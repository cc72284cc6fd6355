"""The composition root: build the worker's parts from settings, in one place, for the CLI
and the tests alike. Only this module (and the CLI) turns settings into HTTP clients."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import httpx

from dicomcast.auth import fhir_auth, tls_verify
from dicomcast.config import Settings, SourceSettings
from dicomcast.errors import ConfigError, FhirRejected, FhirUnavailable
from dicomcast.fhir.capabilities import WriteMode, configured, from_statement
from dicomcast.fhir.client import FhirClient
from dicomcast.fhir.upsert import FhirWriter
from dicomcast.http import RetryPolicy
from dicomcast.mapping.settings import MAPPING_CONFIG_KEYS, load_mappings, mapping_config
from dicomcast.ops.metrics import Metrics
from dicomcast.parts import App
from dicomcast.sources import registry
from dicomcast.sources.base import ReadPlan, Source, SourceContext
from dicomcast.state.locks import PATIENT_SPACE, StudyLocks
from dicomcast.state.store import StateStore
from dicomcast.urls import mask_url

if TYPE_CHECKING:
    from dicomcast.sources.dimse.listener import StoreListener
    from dicomcast.sources.dimse.source import HeaderStore

log = logging.getLogger(__name__)
__all__ = ["MAPPING_CONFIG_KEYS", "App", "build_app", "load_mappings", "mapping_config"]


def retry_policy(settings: Settings) -> RetryPolicy:
    """Short in-process retries of every HTTP request, as the settings say."""
    return RetryPolicy(settings.http_retries, max_delay=30.0, base=settings.http_retry_base)


def source_context(
    settings: Settings,
    transport: httpx.BaseTransport | None = None,
    headers: HeaderStore | None = None,
) -> SourceContext:
    """What every source is built with: TLS, timeouts, retries, the answer bound, and
    `headers`, where a DIMSE source's listener keeps what it received (the state DB)."""
    return SourceContext(
        verify=tls_verify(settings),
        timeout=settings.http_timeout,
        transport=transport,
        retry=retry_policy(settings),
        max_bytes=settings.max_study_bytes,
        headers=headers,
    )


def make_source(
    settings: Settings,
    source: SourceSettings | None = None,
    transport: httpx.BaseTransport | None = None,
    headers: HeaderStore | None = None,
) -> Source:
    """A client for one configured source (the only one, when not named), for the
    operator commands (the worker's are built by `build_app`, with its read plan)."""
    context = source_context(settings, transport, headers)
    return registry.build(source or settings.first_source(), context)


def make_fhir(settings: Settings, transport: httpx.BaseTransport | None = None) -> FhirClient:
    """A client for the FHIR server, logged in as the settings say."""
    if not settings.fhir_url:
        raise ConfigError("missing settings: DICOMCAST_FHIR_URL")
    return FhirClient(
        settings.fhir_url,
        auth=fhir_auth(settings, transport=transport),
        verify=tls_verify(settings),
        timeout=settings.http_timeout,
        transport=transport,
        max_connections=max(4, settings.concurrency * 2),
        retry=retry_policy(settings),
        prefer_minimal=settings.fhir_prefer_minimal,
        client_cert=settings.fhir_client_certificate(),
    )


def write_mode(settings: Settings, fhir: FhirClient, observations: bool) -> WriteMode:
    """How the FHIR server takes writes: as configured, else as its CapabilityStatement
    says (read once, with the interactions dicomcast will use on each resource type)."""
    size = settings.transaction_max_entries
    given = configured(settings.fhir_writes, size)
    if given is not None:
        return given
    retire = "delete" if settings.deleted_study_policy == "delete" else "update"
    written = frozenset({"create", "update", "search-type"})
    needs = {
        "Patient": written,
        "ImagingStudy": written | {retire},
        "Endpoint": written,
        **({"Observation": written | {retire}} if observations else {}),
    }
    try:
        statement = fhir.metadata()
    except (FhirRejected, FhirUnavailable) as exc:
        if isinstance(exc, FhirUnavailable) and exc.outage:
            raise  # the server is down: ask again when it is back
        # A server (or proxy) that will not show its statement: the usual mode, said so.
        why = f"The CapabilityStatement could not be read ({exc}): transactions assumed."
        return WriteMode(max_entries=size, reasons=(why,))
    return from_statement(statement, needs, size)


def build_app(
    settings: Settings,
    *,
    source: Source | None = None,
    sources: list[Source] | None = None,
    fhir_transport: httpx.BaseTransport | None = None,
    metrics: Metrics | None = None,
    adapt: Callable[[SourceSettings, SourceContext], SourceContext] | None = None,
) -> App:
    """Validate settings, compile mappings, migrate the state DB: every fatal check up front.

    `source`/`sources` replace the configured sources' clients (tests pass fakes); they must
    carry the configured names. `adapt` changes what a configured one is built with (tests
    give a transport, a clock)."""
    settings.require_worker_settings()
    if "timezone" not in settings.model_fields_set:
        log.warning(
            "DICOMCAST_TIMEZONE is not set: DICOM times without an offset "
            "(TimezoneOffsetFromUTC) are read as UTC. Set it to the zone the modalities' "
            "clocks run in (e.g. Europe/Berlin), or every such time is off by that much"
        )
    if not settings.verify_tls:
        log.warning(
            "TLS certificate verification is OFF (DICOMCAST_VERIFY_TLS=false): any server can "
            "pose as the DICOM or FHIR server and read patient data and credentials"
        )
    configured = settings.source_list()
    mappings = load_mappings(settings)
    store = StateStore.for_settings(settings)
    if store.migrate():
        log.warning(
            "the state database %s is new: every source's change feed is read from its "
            "beginning (if it was lost, FHIR is not harmed: syncs are idempotent)",
            mask_url(settings.state_url),
        )
    fhir = make_fhir(settings, transport=fhir_transport)
    observations = bool(mappings.owned("Observation"))
    writer = FhirWriter(
        fhir,
        patient_owned=mappings.owned("Patient"),
        study_owned=mappings.owned("ImagingStudy"),
        patient_policy=settings.patient_policy,
        deleted_policy=settings.deleted_study_policy,
        max_entries=settings.transaction_max_entries,
        based_on=settings.based_on,
        observation_owned=mappings.owned("Observation"),
        mode=lambda: write_mode(settings, fhir, observations),
        guard=StudyLocks(store.db, space=PATIENT_SPACE).hold,
    )
    metrics = metrics or Metrics()
    fhir.observe = metrics.observe_fhir
    given = {s.name: s for s in ([source] if source else []) + (sources or [])}
    plan = ReadPlan(mappings.tags_read(), mappings.content_classes(), mappings.item_tags())
    context = replace(source_context(settings, headers=store), plan=plan)
    clients: dict[str, Source] = {}
    for config in configured:
        made = given.pop(config.name) if config.name in given else None
        own = replace(context, observe=_counting(metrics, config.name))
        clients[config.name] = made or registry.build(config, adapt(config, own) if adapt else own)
    if given:
        raise ConfigError(f"sources given that are not configured: {sorted(given)}")
    names = list(clients)
    metrics.watch_state(store, lambda: names)
    listeners = [
        _listener(config, store, metrics)
        for config in configured
        if config.kind == "dimse" and config.store_port is not None
    ]
    return App(settings, store, clients, mappings, fhir, writer, metrics, listeners)


def _listener(config: SourceSettings, store: StateStore, metrics: Metrics) -> StoreListener:
    from dicomcast.sources.dimse.listener import StoreListener

    counter = metrics.received
    return StoreListener(config, store, lambda outcome: counter.labels(config.name, outcome).inc())


def _counting(metrics: Metrics, name: str) -> Callable[[int | None, float], None]:
    return lambda status, _seconds: metrics.observe_source(name, status)
