"""`dicomcast verify`: compare each source with the FHIR server and list the drift
(`dicomcast.sync.verify`); `--fix` marks what drifted dirty, so the workers repair it
(deletions of extra studies still go through the deletion budget)."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import TYPE_CHECKING, Annotated

import typer

from dicomcast.cli.common import (
    ConfigOption,
    SinceOption,
    SourceOption,
    UntilOption,
    guard,
    settings_from,
    source_names,
    study_day,
)
from dicomcast.model import DateSpan, DirtyMark
from dicomcast.state.store import StateStore

if TYPE_CHECKING:
    from dicomcast.sync.verify import Drift


def verify(
    config: ConfigOption = None,
    source: SourceOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    fix: Annotated[
        bool, typer.Option("--fix", help="Mark what drifted dirty: the workers repair it.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Compare the source with FHIR, study by study: missing, extra, stale, dangling and
    duplicate ImagingStudies. Exits 0 only when nothing drifted (before any --fix)."""
    span = DateSpan(study_day(since, "--since"), study_day(until, "--until"))
    settings = settings_from(config)
    from dicomcast.app import build_app
    from dicomcast.runner import verifier
    from dicomcast.worker import Worker

    app = guard(lambda: build_app(settings))
    worker = Worker(app)
    found: list[tuple[str, Drift]] = []
    try:
        for name in guard(lambda: source_names(settings, app.store, source)):
            check = verifier(worker, name)
            found += [(name, d) for d in guard(lambda c=check: list(c.run(span)))]  # type: ignore[misc]
        fixed = _fix(app.store, found) if fix else 0
    finally:
        worker.close()
        app.close()
    _report(found, as_json, fixed if fix else None)
    raise typer.Exit(1 if found else 0)


def _fix(store: StateStore, found: list[tuple[str, Drift]]) -> int:
    """Mark the drifted studies dirty, forced through (written even if unchanged); an extra
    one by the state DB's key for its UID (the sync then finds it gone)."""
    from dicomcast.sync.verify import DriftKind

    count = 0
    now = time.time()
    for name, drift in found:
        if drift.kind is DriftKind.DUPLICATE:
            continue  # two resources for one identifier: a person merges them
        keys = [drift.study_key] if drift.study_key else []
        if not keys and drift.study_uid:
            keys = [row.study_key for row in store.find(name, drift.study_uid)]
        if keys:
            count += store.resync(name, [DirtyMark(k, now, drift.study_uid) for k in keys])
    return count


def _report(found: list[tuple[str, Drift]], as_json: bool, fixed: int | None) -> None:
    if as_json:
        items = [
            {
                "source": name,
                "kind": str(d.kind),
                "study_uid": d.study_uid,
                "study_key": d.study_key,
                "detail": d.detail,
            }
            for name, d in found
        ]
        typer.echo(json.dumps({"drift": items, "marked": fixed}, indent=2))
        return
    if not found:
        typer.echo("no drift: FHIR holds every study as its source has it")
        return
    typer.echo(f"{'SOURCE':<16}  {'KIND':<9}  {'STUDY':<64}  DETAIL")
    for name, d in found:
        typer.echo(f"{name:<16}  {d.kind:<9}  {d.study_uid or d.study_key or '-':<64}  {d.detail}")
    counts = Counter(str(d.kind) for _, d in found)
    typer.echo("\n" + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if fixed is not None:
        typer.echo(f"{fixed} studies marked to sync again; a running worker repairs them")
    else:
        typer.echo("`dicomcast verify --fix` marks them to sync again")
