"""The `dicomcast` command line. Fatal errors print one line and exit 2; `run --once` exits 1
when studies are left failed or waiting for a retry."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.exc import SQLAlchemyError

from dicomcast import __version__
from dicomcast.app import build_app, load_mappings, make_source, mapping_config
from dicomcast.config import Settings, load_settings
from dicomcast.errors import DicomcastError, FatalError, StudyError
from dicomcast.fhir.client import FhirClient
from dicomcast.fhir.upsert import create_entry
from dicomcast.mapping.mapper import placeholder
from dicomcast.ops.logging import setup_logging
from dicomcast.sources.files import read_studies
from dicomcast.state.store import StateStore

app = typer.Typer(
    help="Keep a FHIR R4 server in sync with a DICOM archive.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML or YAML settings file (else $DICOMCAST_CONFIG)."),
]


def _fatal(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except FatalError as exc:
        typer.echo(f"dicomcast: {exc}", err=True)
        raise typer.Exit(2) from None
    except DicomcastError as exc:
        typer.echo(f"dicomcast: {exc}", err=True)
        raise typer.Exit(3) from None


def _settings(config: Path | None, **overrides: Any) -> Settings:
    settings = _fatal(lambda: load_settings(config, **overrides))
    setup_logging(settings.log_level, settings.log_format, settings.log_phi)
    return settings


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.command()
def run(
    config: ConfigOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="Drain the feed and every dirty study, then exit.")
    ] = False,
) -> None:
    """Run the worker: follow the change feed and keep FHIR in sync."""
    settings = _settings(config)
    from dicomcast.worker import Worker

    built = _fatal(lambda: build_app(settings))
    worker = Worker(built)
    try:
        if once:
            started = time.monotonic()
            code = _fatal(worker.run_once)
            totals = dict(worker.totals)
            counts = built.store.counts(built.source.name)
            typer.echo(
                f"dicomcast: {totals.get('synced', 0)} synced, "
                f"{totals.get('unchanged', 0)} unchanged, {totals.get('deleted', 0)} deleted, "
                f"{counts.get('failed', 0)} failed, {counts.get('dirty', 0)} waiting; "
                f"{totals.get('changes', 0)} changes read, {built.fhir.request_count} FHIR "
                f"requests in {time.monotonic() - started:.1f} s",
                err=True,
            )
            raise typer.Exit(code)
        _fatal(worker.run_forever)
    finally:
        worker.close()
        built.close()


def _status(settings: Settings) -> dict[str, Any]:
    store = StateStore(settings.state_url)
    try:
        _fatal(store.migrate)
        source = store.get_source(settings.source_name)
        counts = store.counts(settings.source_name)
        oldest = store.oldest_dirty(settings.source_name)
        now = time.time()
        cursor = source.cursor if source else None
        head = source.feed_head if source else None
        lag = None
        if cursor is not None and head is not None and cursor.isdigit() and head.isdigit():
            lag = max(0, int(head) - int(cursor))
        return {
            "source": settings.source_name,
            "cursor": cursor,
            "feed_head": head,
            "lag_events": lag,
            "studies": {
                "clean": counts.get("clean", 0),
                "dirty": counts.get("dirty", 0),
                "failed": counts.get("failed", 0),
            },
            "oldest_dirty_age_s": round(now - oldest, 1) if oldest else None,
            "failures_by_kind": store.failure_kinds(settings.source_name),
            "last_success_at": _iso(source.last_success_at) if source else None,
            "last_poll_at": _iso(source.last_poll_at) if source else None,
            "archive_resets": source.resets if source else 0,
        }
    finally:
        store.close()


def _iso(epoch: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else None


@app.command()
def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show the cursor, feed head, dirty and failed counts, and the last success."""
    info = _status(_settings(config))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    studies = info["studies"]
    lines = [
        f"source          {info['source']}",
        f"cursor / head   {info['cursor']} / {info['feed_head']}"
        + (f"  ({info['lag_events']} events behind)" if info["lag_events"] is not None else ""),
        f"studies         {studies['clean']} clean, {studies['dirty']} dirty, "
        f"{studies['failed']} failed",
        f"oldest dirty    {info['oldest_dirty_age_s']} s"
        if info["oldest_dirty_age_s"]
        else "oldest dirty    -",
        f"last success    {info['last_success_at'] or '-'}",
        f"last poll       {info['last_poll_at'] or '-'}",
    ]
    if info["failures_by_kind"]:
        lines.append(
            "failures        "
            + ", ".join(f"{k}: {n}" for k, n in sorted(info["failures_by_kind"].items()))
        )
    typer.echo("\n".join(lines))


@app.command("map")
def map_files(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files, DICOM JSON files, or folders.")],
    config: ConfigOption = None,
    patient_id_system: Annotated[
        str | None, typer.Option(help="Patient identifier system when the data names no issuer.")
    ] = None,
) -> None:
    """Dry run: print the FHIR transaction Bundle each study would become. No server needed."""
    settings = _settings(config, patient_id_system=patient_id_system)
    mappings = _fatal(lambda: load_mappings(settings))
    cfg = mapping_config(settings)
    if not cfg["source_public_url"]:
        cfg["source_public_url"] = "http://localhost/dicom-web"
    studies, problems = read_studies(paths)
    for problem in problems:
        typer.echo(f"warning: {problem}", err=True)
    endpoint = _fatal(lambda: mappings.map_endpoint(cfg))
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
        bundles.append(
            _dry_run_bundle(
                endpoint,
                endpoint_ref,
                mapped.patient,
                mapped.patient_placeholder,
                mapped.imaging_study,
            )
        )
    json.dump(
        bundles[0] if len(bundles) == 1 else bundles, sys.stdout, indent=2, ensure_ascii=False
    )
    sys.stdout.write("\n")
    if failed or not studies:
        typer.echo(f"dicomcast: {len(bundles)} studies mapped, {failed} refused", err=True)
        raise typer.Exit(1)


def _dry_run_bundle(
    endpoint: dict[str, Any],
    endpoint_ref: str,
    patient: dict[str, Any],
    patient_ref: str,
    study: dict[str, Any],
) -> dict[str, Any]:
    """What would be sent to an empty server: three conditional creates, linked by urn:uuid."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            create_entry(endpoint, endpoint_ref),
            create_entry(patient, patient_ref),
            create_entry(study),
        ],
    }


@app.command("check-config")
def check_config(config: ConfigOption = None) -> None:
    """Validate settings and mappings, and check that both servers answer."""
    settings = _settings(config)
    _fatal(settings.require_worker_settings)
    mappings = _fatal(lambda: load_mappings(settings))
    typer.echo(f"settings    ok ({json.dumps(settings.public_dict(), default=str)})")
    typer.echo(f"mappings    ok ({mappings.folder})")
    failed = False
    probes: list[tuple[str, Callable[[Settings], str]]] = [
        ("source", _probe_source),
        ("fhir", _probe_fhir),
        ("state", _probe_state),
    ]
    for name, probe in probes:
        try:
            typer.echo(f"{name:<12}ok ({probe(settings)})")
        except (DicomcastError, SQLAlchemyError) as exc:
            failed = True
            typer.echo(f"{name:<12}FAILED: {exc}")
    raise typer.Exit(1 if failed else 0)


def _probe_source(settings: Settings) -> str:
    source = make_source(settings)
    try:
        return source.check()
    finally:
        source.close()


def _probe_fhir(settings: Settings) -> str:
    fhir = FhirClient.from_settings(settings)
    try:
        return f"FHIR {fhir.metadata().get('fhirVersion', '?')}"
    finally:
        fhir.close()


def _probe_state(settings: Settings) -> str:
    store = StateStore(settings.state_url)
    try:
        store.migrate()
        return f"schema {', '.join(sorted(store.schema_revision()))}"
    finally:
        store.close()


def main() -> None:
    app()
