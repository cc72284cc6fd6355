"""The `dicomcast` command line, one module per group of commands:
`worker` (run, status), `checks` (map, check-config), `operator` (failures, resync, cursor),
`backfill`, `deletions` (held over the budget), `verify` (drift between source and FHIR).
Exit codes are listed in `common`."""

from __future__ import annotations

from typing import Annotated

import typer

from dicomcast import __version__
from dicomcast.cli import backfill, checks, deletions, keys, operator, verify, worker

app = typer.Typer(
    help="Keep a FHIR R4 server in sync with a DICOM archive.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def _main(
    version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False,
) -> None:
    if version:
        typer.echo(__version__)
        raise typer.Exit(0)


app.command()(worker.run)
app.command()(worker.status)
app.command("map")(checks.map_files)
app.command("check-config")(checks.check_config)
app.command()(operator.resync)
app.command()(backfill.backfill)
app.command()(verify.verify)
app.add_typer(operator.failures, name="failures")
app.add_typer(operator.cursor, name="cursor")
app.add_typer(keys.keys, name="keys")
app.add_typer(deletions.deletions, name="deletions")


def main() -> None:
    app()
