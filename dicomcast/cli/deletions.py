"""`dicomcast deletions`: the studies whose deletion from FHIR was held because a source
deleted more than `DICOMCAST_DELETE_BUDGET` studies within an hour; approve or reject them.

Approved ones are deleted by the worker's next cycle (past the budget); rejected ones stay
in FHIR as they are until the study changes in its source again."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dicomcast.cli.common import (
    ConfigOption,
    SourceOption,
    iso,
    print_listing,
    read_store,
    settings_from,
    source_names,
    with_store,
)
from dicomcast.state.store import StateStore

deletions = typer.Typer(
    help="Deletions held over the hourly budget (DICOMCAST_DELETE_BUDGET): list, approve, reject."
)
StudyOpt = Annotated[
    str | None, typer.Argument(help="StudyInstanceUID or study key (or give --all).")
]
AllOpt = Annotated[bool, typer.Option("--all", help="Every held deletion.")]


@deletions.command("list")
def deletions_list(
    config: ConfigOption = None,
    source: SourceOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Every held deletion (no patient data: keys, UIDs and times), and the budget used."""
    settings = settings_from(config)

    def read(store: StateStore) -> list[dict[str, Any]]:
        items = []
        for name in source_names(settings, store, source):
            for held in store.held_deletions(name):
                items.append(
                    {
                        "source": held.source,
                        "study_key": held.study_key,
                        "study_uid": held.study_uid,
                        "held_at": iso(held.held_at),
                        "fhir_imagingstudy_id": held.fhir_imagingstudy_id,
                    }
                )
        return items

    items = read_store(settings, read)
    if not print_listing(
        items,
        as_json=as_json,
        empty="no held deletions",
        header=f"{'SOURCE':<16}  {'STUDY':<64}  {'HELD AT':<20}  IMAGINGSTUDY",
        line=lambda i: (
            f"{i['source']:<16}  {i['study_uid'] or i['study_key']:<64}  "
            f"{i['held_at'] or '-':<20}  {i['fhir_imagingstudy_id'] or '-'}"
        ),
    ):
        return
    budget = settings.delete_budget
    typer.echo(
        f"\n{len(items)} deletions held (budget: {budget if budget is not None else 'unlimited'}"
        " an hour per source); `dicomcast deletions approve --all` deletes them from FHIR, "
        "`reject --all` keeps FHIR as it is"
    )


def _decide(
    study: str | None, every: bool, config: Any, source: str | None, *, approve: bool
) -> None:
    if (study is None) == (not every):
        typer.echo("dicomcast: name one STUDY, or give --all", err=True)
        raise typer.Exit(2)
    settings = settings_from(config)

    def run(store: StateStore) -> int:
        names = source_names(settings, store, source)
        return sum(store.decide_deletions(n, study, approve=approve) for n in names)

    count = with_store(settings, run)
    if approve:
        typer.echo(f"{count} deletions approved; a running worker makes them on its next cycle")
    else:
        typer.echo(f"{count} deletions rejected; FHIR keeps these studies until they change")
    if study is not None and count == 0:
        typer.echo(f"dicomcast: no held deletion of {study!r}", err=True)
        raise typer.Exit(1)


@deletions.command("approve")
def deletions_approve(
    study: StudyOpt = None,
    every: AllOpt = False,
    config: ConfigOption = None,
    source: SourceOption = None,
) -> None:
    """Delete held studies from FHIR after all (the budget does not limit these)."""
    _decide(study, every, config, source, approve=True)


@deletions.command("reject")
def deletions_reject(
    study: StudyOpt = None,
    every: AllOpt = False,
    config: ConfigOption = None,
    source: SourceOption = None,
) -> None:
    """Keep held studies in FHIR as they are, until the study changes in its source."""
    _decide(study, every, config, source, approve=False)
