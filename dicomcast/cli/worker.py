"""`run` (the worker, once or for good) and `status` (how far behind FHIR is)."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dicomcast.cli.common import (
    ConfigOption,
    SourceOption,
    guard,
    iso,
    read_store,
    settings_from,
    source_names,
)
from dicomcast.config import Settings
from dicomcast.errors import failure_label
from dicomcast.model import BackfillProgress, SourceSummary, source_dependency
from dicomcast.sources.rest import sequence_number
from dicomcast.state.store import StateStore

if TYPE_CHECKING:
    from dicomcast.model import RoundStats
    from dicomcast.ops.health import Health
    from dicomcast.ops.listener import Listener
    from dicomcast.worker import Worker


def run(
    config: ConfigOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="Drain the feed and every dirty study, then exit.")
    ] = False,
) -> None:
    """Run the worker: follow the change feed and keep FHIR in sync."""
    settings = settings_from(config)
    from dicomcast.app import build_app
    from dicomcast.worker import Worker

    built = guard(lambda: build_app(settings))
    worker = Worker(built)
    interrupted = False
    try:
        if once:
            started = time.monotonic()
            progress = _Progress(built.store, list(built.sources)) if sys.stderr.isatty() else None
            try:
                code = guard(lambda: worker.run_once(progress))
            except KeyboardInterrupt:
                worker.stop_event.set()  # said once the syncs under way have ended
                interrupted = True
                raise typer.Exit(130) from None
            finally:
                if progress:
                    progress.done()
            totals = dict(worker.totals)
            counts = worker.counts()
            typer.echo(
                f"dicomcast: {totals.get('synced', 0)} synced, "
                f"{totals.get('unchanged', 0)} unchanged, {totals.get('deleted', 0)} deleted, "
                f"{counts.get('failed', 0)} failed, {counts.get('dirty', 0)} waiting, "
                f"{counts.get('held', 0)} deletions held; "
                f"{totals.get('changes', 0)} changes read, {built.fhir.request_count} FHIR "
                f"requests in {time.monotonic() - started:.1f} s",
                err=True,
            )
            raise typer.Exit(code)
        listener = _listen(settings, worker)
        try:
            guard(worker.run_forever)
        finally:
            if listener:
                listener.stop()
    finally:
        worker.close()
        said = _interrupted(worker) if interrupted else None
        built.close()
        if said:
            typer.echo(said, err=True)


def _interrupted(worker: Worker) -> str:
    """Ctrl-C during `run --once`: how far it got, and that nothing is lost (exit 130)."""
    totals = worker.totals
    done = sum(totals.get(k, 0) for k in ("synced", "unchanged", "deleted", "failed"))
    waiting = worker.counts().get("dirty", 0)
    return (
        f"dicomcast: interrupted: {done} of {done + waiting} studies done; run again to "
        "finish (the rest wait in the state DB, nothing is lost)"
    )


def _listen(settings: Settings, worker: Worker) -> Listener | None:
    if not settings.http_port:
        return None
    from dicomcast.ops.listener import Listener
    from dicomcast.ops.status_page import StatusPage

    try:
        health = _health(worker).start()
        page = StatusPage(
            lambda: _page_report(worker), lambda: health.ready().body["paused"]
        ).start()
        return Listener(health, settings.http_host, settings.http_port, page).start()
    except OSError as exc:
        typer.echo(
            f"dicomcast: cannot listen on {settings.http_host}:{settings.http_port}: "
            f"{exc.strerror} (set DICOMCAST_HTTP_PORT, or 0 to turn the listener off)",
            err=True,
        )
        raise typer.Exit(2) from None


def _page_report(worker: Worker) -> dict[str, Any]:
    """`status --json` of this worker's sources, with each one's latest failures (their
    kind and study UID only), for the status page."""
    store = worker.app.store
    sources = []
    for name in worker.sources:
        info = _source_status(store.summary(name))
        info["latest_failures"] = [
            {
                "study_uid": row.study_uid,
                "kind": failure_label(row.error_kind or "error", row.error_status),
                "at": iso(row.failed_at),
            }
            for row in store.failures(name)[-10:][::-1]
        ]
        sources.append(info)
    return {"sources": sources}


def _health(worker: Worker) -> Health:
    """What the health endpoints look at: a quick probe of every dependency, the worker's
    heartbeat, and its pauses."""
    from dicomcast.ops.health import Health

    app = worker.app
    probes: dict[str, Callable[[], object]] = {"state": app.store.ping}
    for name, source in app.sources.items():
        probes[source_dependency(name)] = source.check
        probes[f"feed:{name}"] = functools.partial(worker.feed.check, name)
    probes["fhir"] = app.fhir.ping
    app.metrics.watch_pauses(worker.pauses)
    return Health(
        probes,
        worker,
        worker.pauses,
        app.metrics,
        live_within=max(60.0, 10 * worker.settings.poll_interval),
    )


class _Progress:
    """A progress bar for `run --once` on a terminal: studies settled of those waiting."""

    def __init__(self, store: StateStore, sources: list[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.store = store
        self.sources = sources
        self.outcomes: dict[str, int] = {}
        self.bar = Progress(
            TextColumn("studies"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = self.bar.add_task("run --once", total=None, detail="")
        self.bar.start()

    def __call__(self, stats: RoundStats) -> None:
        for outcome, n in stats.outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + n
        settled = sum(self.outcomes.values())
        waiting = sum(self.store.counts(name).get("dirty", 0) for name in self.sources)
        detail = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items()))
        self.bar.update(self.task, total=settled + waiting, completed=settled, detail=detail)

    def done(self) -> None:
        self.bar.stop()


def _status(settings: Settings, only: str | None = None) -> dict[str, Any]:
    summaries = read_store(
        settings,
        lambda store: [store.summary(name) for name in source_names(settings, store, only)],
    )
    return {"sources": [_source_status(info) for info in summaries]}


def _source_status(info: SourceSummary) -> dict[str, Any]:
    now = time.time()
    cursor, head = info.cursor, info.feed_head
    lag = None
    at, end = sequence_number(cursor), sequence_number(head)
    if at is not None and end is not None:  # `²` passes isdigit, and int() refuses it
        lag = max(0, end - at)
    return {
        "source": info.source,
        "cursor": cursor,
        "feed_head": head,
        "lag_events": lag,
        "lag_seconds": round(now - info.oldest_event, 1) if info.oldest_event else 0.0,
        "studies": {
            "clean": info.counts.get("clean", 0) - info.seen,
            "dirty": info.counts.get("dirty", 0),
            "failed": info.counts.get("failed", 0),
        },
        "seen_not_synced": info.seen,
        "deletions": {k: info.counts.get(k, 0) for k in ("held", "kept")},
        "oldest_dirty_age_s": round(now - info.oldest_dirty, 1) if info.oldest_dirty else None,
        "failures_by_kind": info.failures_by_kind,
        "held_by": info.holder_now(now),
        "last_success_at": iso(info.last_success_at),
        "last_poll_at": iso(info.last_poll_at),
        "archive_resets": info.resets,
        "feed_entries_skipped": info.feed_skips,
        "feed_error": info.feed_error,
        "backfill": _backfill_status(info.backfill),
    }


def _backfill_status(run: BackfillProgress | None) -> dict[str, Any] | None:
    """The newest unfinished backfill of a source."""
    if run is None:
        return None
    return {
        "id": run.id,
        "since": run.since,
        "until": run.until,
        "listing": run.listing,
        "listed": run.listed,
        "to_sync": run.marked,
        "done": run.done,
        "failed": run.failed,
        "rate_per_s": round(run.rate, 2),
        "eta_s": round(run.eta) if run.eta is not None else None,
        "started_at": iso(run.started_at),
    }


def status(
    config: ConfigOption = None,
    source: SourceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[
        float | None,
        typer.Option(min=0.1, help="Refresh every this many seconds until Ctrl-C."),
    ] = None,
) -> None:
    """Show how far behind FHIR is, per source: events and seconds, dirty and failed
    studies, by reason."""
    settings = settings_from(config)
    try:
        while True:
            _show_status(_status(settings, source), as_json, watch)
            if not watch:
                return
            time.sleep(watch)
    except KeyboardInterrupt:  # how --watch ends, whenever it comes
        if not watch:
            raise


def _show_status(report: dict[str, Any], as_json: bool, watch: float | None) -> None:
    if watch and not as_json:
        if sys.stdout.isatty():
            typer.echo("\033[2J\033[H", nl=False)  # the screen cleared, cursor home
        typer.echo(f"dicomcast status, every {watch:g} s (Ctrl-C to stop)\n")
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        typer.echo("\n\n".join(_status_text(info) for info in report["sources"]))


def _status_text(info: dict[str, Any]) -> str:
    studies = info["studies"]
    behind = f"  ({info['lag_events']} events behind)" if info["lag_events"] is not None else ""
    lines = [
        f"source          {info['source']}"
        + (f"  (tailed by {info['held_by']})" if info["held_by"] else "  (no worker running)"),
        f"cursor / head   {info['cursor']} / {info['feed_head']}{behind}",
        f"lag             {info['lag_seconds']} s (oldest change not yet in FHIR)",
        f"studies         {studies['clean']} clean, {studies['dirty']} dirty, "
        f"{studies['failed']} failed"
        + (
            f", {info['seen_not_synced']} seen, not synced (history skipped by `cursor set "
            "head`: each is synced once it changes, or by `dicomcast backfill`)"
            if info["seen_not_synced"]
            else ""
        ),
        f"oldest dirty    {info['oldest_dirty_age_s'] or '-'} s",
        f"last success    {info['last_success_at'] or '-'}",
        f"last poll       {info['last_poll_at'] or '-'}",
    ]
    if info["feed_error"]:
        lines.append(f"feed STOPPED   {info['feed_error']}")
    deletions = info["deletions"]
    if deletions["held"] or deletions["kept"]:
        lines.append(
            f"deletions       {deletions['held']} held over the budget, {deletions['kept']} kept "
            "by an operator   (see: dicomcast deletions list)"
        )
    if info["feed_entries_skipped"]:
        lines.append(
            f"feed skips      {info['feed_entries_skipped']} entries could not be used "
            "(see: dicomcast failures list --feed)"
        )
    run = info["backfill"]
    if run:
        eta = f", about {run['eta_s']} s left" if run["eta_s"] else ""
        listing = " (still listing)" if run["listing"] else ""
        lines.append(
            f"backfill        {run['done']}/{run['to_sync']} done{listing}, {run['failed']} "
            f"failed, {run['rate_per_s']}/s{eta}"
        )
    if info["failures_by_kind"]:
        lines.append(
            "failures        "
            + ", ".join(f"{k}: {n}" for k, n in sorted(info["failures_by_kind"].items()))
            + "   (see: dicomcast failures list)"
        )
    return "\n".join(lines)
