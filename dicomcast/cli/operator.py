"""Operator commands on the state DB: read failures back, retry or force studies, move the
cursor. They work beside a running worker (it picks changes up on its next cycle), except
`cursor set`, which is refused while a worker holds the source."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from dicomcast.cli.common import (
    ConfigOption,
    SourceOption,
    iso,
    print_listing,
    settings_from,
    source_names,
    with_store,
)
from dicomcast.config import Settings, SourceSettings
from dicomcast.errors import ConfigError, DicomcastError, StoredValueError
from dicomcast.model import DirtyMark
from dicomcast.ops.logging import redact
from dicomcast.state.models import StudyRow
from dicomcast.state.store import StateStore

T = TypeVar("T")
failures = typer.Typer(help="Studies that failed or are backing off: list, show, retry.")
cursor = typer.Typer(help="Where the worker reads the change feed from: show, set.")

StudyArg = Annotated[str, typer.Argument(help="StudyInstanceUID, or the source's study key.")]


def _with_store(config: Any, fn: Callable[[Settings, StateStore], T], *, create: bool = True) -> T:
    """`fn` on the state DB; without `create` (a command that only reads) none is made."""
    settings = settings_from(config)
    return with_store(settings, lambda store: fn(settings, store), create=create)


def _reading(config: Any, fn: Callable[[Settings, StateStore], T]) -> T:
    return _with_store(config, fn, create=False)


def _failure(row: StudyRow, *, phi: bool = False) -> dict[str, Any]:
    """One study's failure record. Without `phi`, nothing that may hold patient data: the
    reason (PHI-free by construction) and warnings with their quoted values masked. With
    it, also the server's own words (`detail`) and the warnings as they are."""
    warnings = json.loads(row.warnings) if row.warnings else []
    record = {
        "study_uid": row.study_uid,
        "study_key": row.study_key,
        "source": row.source,
        "status": "failed" if row.status == "failed" else "retrying",
        "kind": row.error_kind,
        "http_status": row.error_status,
        "attempts": row.attempts,
        "failed_at": iso(row.failed_at),
        "next_attempt_at": iso(row.next_attempt_at) if row.status != "failed" else None,
        "error": row.last_error,
        "warnings": warnings if phi else [redact(str(w)) for w in warnings],
        "last_synced_at": iso(row.last_synced_at),
        "fhir_imagingstudy_id": row.fhir_imagingstudy_id,
    }
    if phi:
        record["detail"] = row.error_detail
    return record


def _keys(
    settings: Settings, store: StateStore, name: str, study: str, *, strict: bool = False
) -> list[str]:
    """The study keys an operator means by `study`: a key or a UID the state DB knows, else
    (a UID of a study never synced, whose row has no UID yet) what the archive says that
    UID is. Without `strict`, an archive that cannot be asked just finds nothing more."""
    from dicomcast.app import make_source
    from dicomcast.studyview import is_uid

    keys = [row.study_key for row in store.find(name, study)]
    if keys or not is_uid(study):
        return keys
    try:
        client = make_source(settings, settings.find_source(name))
    except ConfigError:
        if strict:
            raise
        return []
    try:
        return client.lookup_study(study)
    except DicomcastError:
        if strict:
            raise
        return []
    finally:
        client.close()


@failures.command("list")
def failures_list(
    config: ConfigOption = None,
    source: SourceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    feed: Annotated[
        bool, typer.Option("--feed", help="The change-feed entries skipped instead.")
    ] = False,
) -> None:
    """Every study parked as failed or backing off, with the reason (no patient data)."""
    if feed:
        _feed_skips(config, source, as_json)
        return
    rows = _reading(
        config,
        lambda s, store: [r for n in source_names(s, store, source) for r in store.failures(n)],
    )
    items = [_failure(r) for r in rows]
    if print_listing(
        items,
        as_json=as_json,
        empty="no failures",
        header=f"{'STUDY':<64}  {'STATUS':<8}  {'KIND':<16}  {'HTTP':>4}  {'TRIES':>5}  ERROR",
        line=_failure_line,
    ):
        typer.echo(f"\n{len(items)} studies; `dicomcast failures show STUDY` for the whole record")
        _issuer_hint(items)


def _failure_line(item: dict[str, Any]) -> str:
    error = (item["error"] or "").splitlines()[0][:90]
    return (
        f"{item['study_uid'] or item['study_key']:<64}  {item['status']:<8}  "
        f"{item['kind'] or '-':<16}  {item['http_status'] or '-':>4}  "
        f"{item['attempts']:>5}  {error}"
    )


def _issuer_hint(items: list[dict[str, Any]]) -> None:
    """Studies parked for an unknown issuer of patient IDs have one fix: say it once."""
    from dicomcast.mapping.codes import UnknownIssuer

    issuers = Counter(
        issuer
        for item in items
        if item["kind"] == UnknownIssuer.__name__
        and (issuer := UnknownIssuer.issuer_in(item["error"] or ""))
    )
    if not issuers:
        return
    named = ", ".join(f"{issuer!r} ({count})" for issuer, count in issuers.most_common())
    example = json.dumps({issuer: "urn:oid:<its OID>" for issuer in issuers})
    typer.echo(
        f"\n{sum(issuers.values())} studies wait because their patient IDs come from issuers "
        f"no setting places: {named}.\n"
        f"Fix: give each its identifier system, e.g. DICOMCAST_ISSUER_SYSTEMS='{example}' "
        "(keep the ones you have), restart the worker, then `dicomcast failures retry --all`.\n"
        "Or set DICOMCAST_UNKNOWN_ISSUER=derive (a system per issuer) or default-system "
        "(one namespace: patients of different issuers with equal IDs become one Patient)."
    )


def _feed_skips(config: Any, source: str | None, as_json: bool) -> None:
    skips = _reading(
        config,
        lambda s, store: [r for n in source_names(s, store, source) for r in store.feed_skips(n)],
    )
    items = [
        {"source": r.source, "position": r.position, "reason": r.reason, "at": iso(r.at)}
        for r in skips
    ]
    print_listing(
        items,
        as_json=as_json,
        empty="no skipped feed entries",
        header=f"{'SOURCE':<16}  {'POSITION':<32}  {'AT':<20}  REASON",
        line=lambda i: f"{i['source']:<16}  {i['position']:<32}  {i['at']:<20}  {i['reason']}",
    )


@failures.command("show")
def failures_show(
    study: StudyArg, config: ConfigOption = None, source: SourceOption = None
) -> None:
    """The whole record of one study: error, the server's own words (its OperationOutcome,
    which can name the patient: for operators cleared to see patient data), warnings."""
    rows = _reading(
        config,
        lambda s, store: [
            r
            for n in source_names(s, store, source)
            for key in _keys(s, store, n, study)
            for r in store.find(n, key)
        ],
    )
    if not rows:
        typer.echo(f"dicomcast: no study {study!r} in the state database", err=True)
        raise typer.Exit(1)
    for row in rows:
        record = _failure(row, phi=True)
        record["status"] = row.status
        for key, value in record.items():
            if key == "warnings":
                for warning in value:
                    typer.echo(f"{'warning':<22}{warning}")
            elif key in ("error", "detail") and value:
                typer.echo(f"{key:<22}" + str(value).replace("\n", "\n" + " " * 22))
            else:
                typer.echo(f"{key:<22}{value if value is not None else '-'}")


@failures.command("retry")
def failures_retry(
    study: Annotated[str | None, typer.Argument(help="StudyInstanceUID or study key.")] = None,
    retry_all: Annotated[bool, typer.Option("--all", help="Retry every failed study.")] = False,
    config: ConfigOption = None,
    source: SourceOption = None,
) -> None:
    """Make failed studies due now, with their attempts reset (after fixing the cause)."""
    if (study is None) == (not retry_all):
        typer.echo("dicomcast: name one STUDY, or give --all", err=True)
        raise typer.Exit(2)

    def run(settings: Settings, store: StateStore) -> int:
        names = source_names(settings, store, source)
        if study is None:
            return sum(store.retry(n, None) for n in names)
        return sum(store.retry(n, key) for n in names for key in _keys(settings, store, n, study))

    count = _with_store(config, run)
    typer.echo(f"{count} studies queued for retry; a running worker takes them on its next cycle")
    if study is not None and count == 0:
        raise typer.Exit(1)


def resync(study: StudyArg, config: ConfigOption = None, source: SourceOption = None) -> None:
    """Force one study through again, written to FHIR even if nothing changed."""

    def run(settings: Settings, store: StateStore) -> int:
        count = 0
        for name in source_names(settings, store, source):
            keys = _keys(settings, store, name, study, strict=True)
            if keys:
                count += store.resync(name, [DirtyMark(k, time.time()) for k in keys])
        return count

    count = _with_store(config, run)  # a missing source URL exits 2, as every fatal error
    if not count:
        typer.echo(f"dicomcast: no study {study!r} in the state database or the archive", err=True)
        raise typer.Exit(1)
    typer.echo(f"{count} studies queued for a forced sync")


@cursor.command("show")
def cursor_show(config: ConfigOption = None, source: SourceOption = None) -> None:
    """The feed position, the feed's head, and which worker holds each source."""
    summaries = _reading(
        config,
        lambda s, store: [store.summary(n) for n in source_names(s, store, source)],
    )
    for i, summary in enumerate(summaries):
        held = summary.holder_now()
        if i:
            typer.echo("")
        typer.echo(f"source   {summary.source}")
        typer.echo(f"cursor   {summary.cursor if summary.cursor is not None else '-'}")
        typer.echo(f"head     {summary.feed_head if summary.feed_head is not None else '-'}")
        typer.echo(f"held by  {held or '-'}")


@cursor.command("set")
def cursor_set(
    value: Annotated[
        str,
        typer.Argument(
            help="The new position: a sequence number (Orthanc, change feed v1), an ISO "
            "time (change feed v2), or `head`: start from now, skipping the archive's history."
        ),
    ],
    config: ConfigOption = None,
    source: SourceOption = None,
) -> None:
    """Move the feed position, e.g. to skip or replay history. Refused while a worker runs.

    Replaying is safe (syncs are idempotent). Skipping forward leaves the skipped studies to
    the periodic reconcile scan (Orthanc) or to `resync`."""

    def run(settings: Settings, store: StateStore) -> tuple[str | None, str, int]:
        names = source_names(settings, store, source)
        if len(names) > 1:  # never a guess among several
            raise ConfigError(f"several sources; say which with --source ({', '.join(names)})")
        (name,) = names
        configured = _configured(settings, name)
        position, seen = value, 0
        if value == "head":
            if configured is None:
                raise ConfigError(f"source {name!r} is not configured: its head is unknown")
            position, seen = _start_from_now(settings, configured, store)
        _check_cursor(settings, name, position)
        before = store.summary(name).cursor
        store.set_cursor(name, position, kind=configured.kind if configured else None)
        return before, position, seen

    before, position, seen = _with_store(config, run)
    typer.echo(f"cursor moved from {before} to {position}")
    if seen:
        typer.echo(
            f"{seen} studies the archive holds now are recorded as seen: each is synced "
            "once it changes"
        )


def _configured(settings: Settings, name: str) -> SourceSettings | None:
    try:
        return settings.find_source(name)
    except ConfigError:
        return None


def _start_from_now(
    settings: Settings, config: SourceSettings, store: StateStore
) -> tuple[str, int]:
    """The feed's head, and (for a source whose feed logs no deletes, which a reconcile
    scan would otherwise fill in from the archive's history) its present studies recorded
    as seen. Returns the position and how many studies were newly recorded."""
    from dicomcast.app import make_source
    from dicomcast.sources.base import StudyListing
    from dicomcast.sources.registry import change_feed

    client = make_source(settings, config)
    try:
        position = change_feed(client).head()
        if not isinstance(client, StudyListing):  # its feed logs deletions
            return position, 0
        known = store.known_studies(config.name)
        present = client.list_studies()
        store.baseline(config.name, present)
        return position, len(set(present) - set(known))
    finally:
        client.close()


def _check_cursor(settings: Settings, name: str, value: str) -> None:
    """Refuse a position the source's feed cannot read from (a fatal error: exit 2)."""
    from dicomcast.sources import registry
    from dicomcast.sources.rest import sequence_number

    config = _configured(settings, name)  # None: not configured here, only a number is safe
    try:
        if config is not None:
            registry.check_cursor(config, value)
        elif sequence_number(value) is None:  # `²` passes str.isdigit; 5,000 digits do too
            raise StoredValueError(f"{value[:40]!r} is not a change sequence number")
    except StoredValueError as exc:
        raise ConfigError(str(exc)) from None
