"""What every command shares: loading settings, and turning errors into exit codes.

Exit codes: 0 fine; 1 work left undone (failed or waiting studies, probes failing);
2 fatal (bad settings, broken mappings, a state DB from a newer version); 3 an error that
may pass (a server or the state DB unavailable) or an operator command refused.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from dicomcast.config import Settings, load_settings
from dicomcast.config.loading import stray_variables
from dicomcast.errors import (
    ConfigError,
    DicomcastError,
    FatalError,
    OperatorError,
    StateSchemaError,
)
from dicomcast.ops.logging import setup_logging
from dicomcast.state.store import StateStore
from dicomcast.urls import mask_url

log = logging.getLogger(__name__)
T = TypeVar("T")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML or YAML settings file (else $DICOMCAST_CONFIG)."),
]


SourceOption = Annotated[
    str | None,
    typer.Option("--source", "-s", help="Which source (default: every configured one)."),
]
SinceOption = Annotated[
    str | None, typer.Option(help="Only studies with a StudyDate on or after (YYYY-MM-DD).")
]


def study_day(value: str | None, name: str) -> dt.date | None:
    """A `--since`/`--until` value as a date; a clear usage error otherwise."""
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint=name) from None


UntilOption = Annotated[
    str | None, typer.Option(help="Only studies with a StudyDate on or before (YYYY-MM-DD).")
]


def source_names(settings: Settings, store: StateStore, only: str | None = None) -> list[str]:
    """The sources a command acts on: the one named, else every configured one (or, with
    no source configured, every one the state DB knows)."""
    if only:
        known = set(store.sources())
        with contextlib.suppress(ConfigError):  # none configured: the state DB's names
            known |= {s.name for s in settings.source_list()}
        if only not in known:
            raise OperatorError(f"no source named {only!r} (known: {', '.join(sorted(known))})")
        return [only]
    try:
        return [s.name for s in settings.source_list()]
    except ConfigError:
        return store.sources() or [settings.source.name if settings.source else "default"]


def guard(fn: Callable[[], T]) -> T:
    """Run `fn`; a dicomcast error becomes one line on stderr and its exit code."""
    try:
        return fn()
    except FatalError as exc:
        typer.echo(f"dicomcast: {exc}", err=True)
        raise typer.Exit(2) from None
    except DicomcastError as exc:
        typer.echo(f"dicomcast: {exc}", err=True)
        raise typer.Exit(3) from None


def settings_from(config: Path | None, **overrides: Any) -> Settings:
    settings = guard(lambda: load_settings(config, **overrides))
    setup_logging(settings.log_level, settings.log_format, settings.log_phi)
    for warning in stray_variables(os.environ, Settings.model_fields):
        log.warning(warning)
    return settings


def with_store(settings: Settings, fn: Callable[[StateStore], T], *, create: bool = True) -> T:
    """Open the state DB (migrated), run `fn` on it, close it; errors become exit codes.
    Without `create` (a command that only reads), a state DB that does not exist is never
    created (an empty one would report "0 failed, lag 0 s" as if all were well): it is
    said there is none, where it was looked for (exit 2)."""
    store = guard(lambda: StateStore.for_settings(settings))  # a bad URL: one line, exit 2
    try:
        if not create:
            file = store.db.file
            if file is not None and not file.exists():
                guard(lambda: _none_at(f"{file.resolve()}"))
            if not guard(store.schema_revision):
                guard(lambda: _none_at(mask_url(settings.state_url)))
        guard(store.migrate)
        return guard(lambda: fn(store))
    finally:
        store.close()


def read_store(settings: Settings, fn: Callable[[StateStore], T]) -> T:
    """`with_store` for a command that only reads: none is created."""
    return with_store(settings, fn, create=False)


def _none_at(where: str) -> None:
    raise StateSchemaError(
        f"no dicomcast state database at {where}: nothing has run with these settings "
        "here. Set DICOMCAST_STATE_URL to the worker's (or run from its folder)"
    )


def iso(epoch: float | None) -> str | None:
    """Epoch seconds as a UTC ISO timestamp for output; None stays None."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else None


def print_listing(
    items: list[dict[str, Any]],
    *,
    as_json: bool,
    empty: str,
    header: str,
    line: Callable[[dict[str, Any]], str],
) -> bool:
    """A list command's output: JSON, a line saying there is nothing, or a table (a header
    and one line per item). True when a table was printed (the caller may add a footer)."""
    if as_json:
        typer.echo(json.dumps(items, indent=2))
        return False
    if not items:
        typer.echo(empty)
        return False
    typer.echo(header)
    for item in items:
        typer.echo(line(item))
    return True
