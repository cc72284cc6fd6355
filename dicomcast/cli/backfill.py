"""`backfill`: sync an archive's existing studies behind live changes.

The command lists the archive (resuming a run that was interrupted), marks what it lists
into the dirty set at backfill priority, and then follows the workers syncing it with a
progress bar. The workers do the syncing: the command may be stopped at any point and the
backfill goes on; run it again to watch it or to resume its listing.
"""

from __future__ import annotations

import functools
import time
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
from dicomcast.errors import ConfigError
from dicomcast.model import BackfillProgress, DateSpan
from dicomcast.state.store import StateStore

if TYPE_CHECKING:
    from rich.console import Console

    from dicomcast.config import Settings


def backfill(
    config: ConfigOption = None,
    source: SourceOption = None,
    since: SinceOption = None,
    until: UntilOption = None,
    max_rate: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            max=1e6,  # `inf` (or 1e400) would overflow every worker's pacing, each cycle
            help="Backfill studies per second, all workers together.",
        ),
    ] = None,
    max_requests: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            max=1e6,
            help="FHIR requests per second (live ones too), all workers together, above "
            "which the backfill pauses.",
        ),
    ] = None,
    page_size: Annotated[
        int, typer.Option(min=1, max=10000, help="Studies asked for per listing request.")
    ] = 1000,
    wait: Annotated[
        bool, typer.Option(help="Follow the sync with a progress bar until it is done.")
    ] = True,
    cancel: Annotated[
        bool,
        typer.Option(
            "--cancel",
            help="End the running backfill: its studies not synced yet are left as seen.",
        ),
    ] = False,
) -> None:
    """Sync the studies the archive holds already (e.g. on a fresh install, or after
    `cursor set head`), behind live changes: a live study is synced within the usual lag
    while a backfill runs. Studies synced before are skipped. Interrupted, it resumes."""
    span = DateSpan(study_day(since, "--since"), study_day(until, "--until"))
    if span.since and span.until and span.since > span.until:
        raise typer.BadParameter("--since is after --until")
    from rich.console import Console

    settings = settings_from(config)
    store = StateStore.for_settings(settings)
    try:
        guard(store.migrate)
        names = guard(lambda: source_names(settings, store, source))
        if cancel:
            for name in names:
                taken = guard(functools.partial(store.cancel_backfills, name))
                typer.echo(
                    f"backfill of {name} cancelled: {taken} studies not synced yet are left "
                    "as seen (each is synced once it changes)"
                )
            return
        console = Console(stderr=True)
        held = {n: guard(functools.partial(store.summary, n)).holder_now() for n in names}
        idle = [n for n, holder in held.items() if holder is None]
        for name in idle:
            console.print(
                f"no worker is running for {name}: the backfill waits for one; start "
                "`dicomcast run`"
            )
        for name in names:
            guard(
                functools.partial(
                    _list, settings, store, name, span, (max_rate, max_requests), page_size, console
                )
            )
        if wait:
            code = guard(lambda: _follow(store, names, console))
            raise typer.Exit(code)
        for run in guard(lambda: _newest(store, names)):
            typer.echo(_line(run))
        if not idle:
            typer.echo("the workers sync them; see progress with: dicomcast status")
    finally:
        store.close()


def _list(
    settings: Settings,
    store: StateStore,
    name: str,
    span: DateSpan,
    limits: tuple[float | None, float | None],
    page_size: int,
    console: Console,
) -> None:
    """List the archive into the run's dirty set, from where an earlier try stopped."""
    from rich.progress import Progress, TextColumn

    from dicomcast.app import make_source
    from dicomcast.sources.base import archive_of

    configured = settings.find_source(name)
    since, until = (f"{d:%Y%m%d}" if d else None for d in (span.since, span.until))
    run = store.open_backfill(name, since, until, *limits)
    if run.listed_at is not None:
        return
    client = make_source(settings, configured)
    after = run.after
    try:
        with Progress(
            TextColumn(f"listing {name}"),
            TextColumn("{task.completed} studies"),
            console=console,
            disable=not console.is_terminal,
            transient=True,
        ) as bar:
            task = bar.add_task("listing", total=None, completed=run.listed)
            while True:
                page = archive_of(client).archive(span, after, page_size)
                store.mark_backfill(run, page.keys, page.after)
                bar.advance(task, len(page.keys))
                after = page.after
                if after is None:
                    return
    finally:
        client.close()


def _newest(store: StateStore, names: list[str]) -> list[BackfillProgress]:
    found = []
    for name in names:
        runs = store.backfills(name)
        if runs:
            found.append(runs[0])
    return found


def _line(run: BackfillProgress) -> str:
    eta = f", about {run.eta:.0f} s left" if run.eta else ""
    return (
        f"backfill of {run.source}: {run.listed} studies listed, {run.marked} to sync "
        f"({run.listed - run.marked} synced before), {run.done} done, {run.failed} failed, "
        f"{run.rate:.1f}/s{eta}"
    )


def _follow(store: StateStore, names: list[str], console: Console) -> int:
    """A progress bar per source until every run is finished; 1 when studies failed."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f}/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        tasks: dict[str, TaskID] = {}
        try:
            while True:
                runs = _newest(store, names)
                for run in runs:
                    if run.source not in tasks:
                        tasks[run.source] = bar.add_task(f"backfill {run.source}", rate=0.0)
                    bar.update(
                        tasks[run.source],
                        total=run.marked,
                        completed=run.done + run.failed,
                        rate=run.rate,
                    )
                if all(run.finished_at is not None for run in runs):
                    break
                time.sleep(1.0)
        except KeyboardInterrupt:
            held = [n for n in names if store.summary(n).holder_now() is not None]
            if held:
                console.print("the backfill goes on in the workers; see: dicomcast status")
            else:
                console.print(
                    "no worker is running: the backfill waits for `dicomcast run` "
                    "(or: dicomcast backfill --cancel)"
                )
            return 0
    for run in runs:
        typer.echo(_line(run))
    if not runs:
        raise ConfigError("no backfill has run")
    return 1 if any(run.failed for run in runs) else 0
