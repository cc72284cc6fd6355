"""Commands that need no running worker: `map` (a dry run on files) and `check-config`."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dicomcast.cli.common import ConfigOption, guard, settings_from
from dicomcast.config import Settings, SourceSettings
from dicomcast.errors import ConfigError, DicomcastError, StudyError
from dicomcast.model import source_dependency
from dicomcast.state.store import StateStore

if TYPE_CHECKING:
    from dicomcast.fhir.capabilities import WriteMode
    from dicomcast.fhir.client import FhirClient
    from dicomcast.mapping.mapper import MappedStudy


def map_files(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files, DICOM JSON files, or folders.")],
    config: ConfigOption = None,
    patient_id_system: Annotated[
        str | None, typer.Option(help="Patient identifier system when the data names no issuer.")
    ] = None,
) -> None:
    """Dry run: print the FHIR transaction Bundle each study would become. No server needed."""
    from dicomcast.app import load_mappings, mapping_config
    from dicomcast.mapping.mapper import placeholder
    from dicomcast.sources.files import read_studies

    settings = settings_from(config, patient_id_system=patient_id_system)
    mappings = guard(lambda: load_mappings(settings))
    cfg = mapping_config(settings)
    if not cfg["source_public_url"]:
        cfg["source_public_url"] = "http://localhost/dicom-web"
    studies, problems = read_studies(paths)
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)
    endpoint = guard(lambda: mappings.map_endpoint(cfg))
    endpoint_ref = placeholder("Endpoint", cfg["source_public_url"])
    bundles, failed = [], 0
    for study in studies:
        try:
            mapped = mappings.map_study(study, cfg, endpoint_ref)
        except StudyError as exc:
            failed += 1
            typer.echo(f"error: study {study.uid}: {exc}", err=True)
            continue
        for warning in mapped.warnings:
            typer.echo(f"warning: study {study.uid}: {warning}", err=True)
        bundles.append(_dry_run_bundle(endpoint, endpoint_ref, mapped))
    json.dump(
        bundles[0] if len(bundles) == 1 else bundles, sys.stdout, indent=2, ensure_ascii=False
    )
    sys.stdout.write("\n")
    if failed or not studies:
        typer.echo(f"dicomcast: {len(bundles)} studies mapped, {failed} refused", err=True)
        raise typer.Exit(1)


def _dry_run_bundle(
    endpoint: dict[str, Any], endpoint_ref: str, mapped: MappedStudy
) -> dict[str, Any]:
    """What would be sent to an empty server: conditional creates (Endpoint, Patient,
    ImagingStudy, one Observation per dose report), linked by urn:uuid."""
    from dicomcast.fhir.entries import create_entry

    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            create_entry(endpoint, endpoint_ref),
            create_entry(mapped.patient, mapped.patient_placeholder),
            create_entry(mapped.imaging_study, mapped.study_placeholder),
            *(create_entry(o) for o in mapped.observations),
        ],
    }


def check_config(config: ConfigOption = None) -> None:
    """Validate settings and mappings, and check that both servers answer."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicomcast.app import load_mappings

    settings = settings_from(config)
    guard(settings.require_worker_settings)
    mappings = guard(lambda: load_mappings(settings))
    typer.echo("settings    ok (secrets masked)")
    for name, value in _flat(settings.public_dict()):
        typer.echo(f"  {name} = {json.dumps(value, default=str)}")
    typer.echo(f"mappings    ok ({mappings.folder})")
    failed = False
    probes: list[tuple[str, Callable[[], str]]] = [
        (source_dependency(source.name), functools.partial(_probe_source, settings, source))
        for source in settings.source_list()
    ]
    probes += [
        ("fhir", lambda: _probe_fhir(settings, bool(mappings.owned("Observation")))),
        ("state", lambda: _probe_state(settings)),
    ]
    width = max(12, *(len(name) + 2 for name, _ in probes))
    for name, probe in probes:
        try:
            typer.echo(f"{name:<{width}}ok ({probe()})")
        except (DicomcastError, SQLAlchemyError) as exc:
            failed = True
            typer.echo(f"{name:<{width}}FAILED: {exc}")
    raise typer.Exit(1 if failed else 0)


def _flat(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Settings one a line: a source's as `source.url`, a list's as `sources[0].url`;
    unset ones left out."""
    for name, value in values.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{name}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                yield from _flat(item, f"{prefix}{name}[{i}].")
        elif value not in (None, "", [], {}):
            yield f"{prefix}{name}", value


def _probe_source(settings: Settings, config: SourceSettings) -> str:
    from dicomcast.app import make_source

    source = make_source(settings, config)
    try:
        return source.check()
    finally:
        source.close()


def _probe_fhir(settings: Settings, observations: bool) -> str:
    """The FHIR version, how dicomcast logs in (a token is fetched, to name the scopes
    granted and any not granted), and how it will write; interactions it needs that the
    server does not list fail the check."""
    from dicomcast.app import make_fhir, write_mode
    from dicomcast.auth import RenewingToken, describe

    fhir = make_fhir(settings)
    try:
        version = fhir.metadata().get("fhirVersion", "?")
        if isinstance(fhir.http.auth, RenewingToken):
            fhir.http.auth.token()
        mode = write_mode(settings, fhir, observations)
        if mode.probe_if_match:
            mode = _learn_if_match(settings, fhir, mode)
        words = f"FHIR {version}; login: {describe(fhir.http.auth)}; writes: {mode.describe()}"
        if mode.missing:
            raise ConfigError(
                f"{words}; the server does not list what dicomcast needs: "
                + ", ".join(mode.missing)
            )
        return words
    finally:
        fhir.close()


def _learn_if_match(settings: Settings, fhir: FhirClient, mode: WriteMode) -> WriteMode:
    """Whether If-Match is enforced, learnt as the worker learns it: by a stale-version
    update of dicomcast's Endpoint (its content unchanged). Before the first start there
    is no Endpoint to try it on, and the mode says it will be learnt."""
    from dicomcast.app import load_mappings, make_source
    from dicomcast.fhir.writes import Writes
    from dicomcast.mapping.mapper import search_token
    from dicomcast.mapping.settings import mapping_config

    config = settings.first_source()
    source = make_source(settings, config)
    try:
        location = source.default_location()
    finally:
        source.close()
    if location is None or not location.address:
        return mode
    mappings = load_mappings(settings)
    endpoint = mappings.map_endpoint(mapping_config(settings, config, location), validate=False)
    found = fhir.search(f"Endpoint?identifier={search_token(endpoint)}")
    if len(found) != 1:
        return mode
    writes = Writes(fhir, lambda: mode)
    writes.if_match_target(found[0])
    return writes.mode()


def _probe_state(settings: Settings) -> str:
    """What the state DB is, read only: a check creates nothing (the worker does)."""
    from dicomcast.state.db import SCHEMA_HEAD

    store = StateStore.for_settings(settings)
    try:
        file = store.db.file
        if file is not None and not file.exists():
            store.db.check_creatable()
            return f"none yet at {file.resolve()}: the worker creates it, schema {SCHEMA_HEAD}"
        found = store.schema_revision()
        if not found:
            return f"empty: the worker creates schema {SCHEMA_HEAD}"
        if found != {SCHEMA_HEAD}:
            return f"schema {', '.join(sorted(found))}: the worker migrates it to {SCHEMA_HEAD}"
        return f"schema {SCHEMA_HEAD}"
    finally:
        store.close()
