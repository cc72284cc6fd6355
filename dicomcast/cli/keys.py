"""`keys`: the key pair of SMART Backend Services: make one, print its public JWKS."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from dicomcast.cli.common import ConfigOption, guard, settings_from
from dicomcast.errors import ConfigError

keys = typer.Typer(help="SMART Backend Services keys: make a key pair, print its public JWKS.")


@keys.command("generate")
def keys_generate(
    alg: Annotated[str, typer.Option(help="RS384 (RSA 3072) or ES384 (EC P-384).")] = "ES384",
    out: Annotated[
        Path | None,
        typer.Option(help="Write the private key here (mode 0600, never overwritten)."),
    ] = None,
) -> None:
    """Make a private key (PEM) for DICOMCAST_FHIR_PRIVATE_KEY; stdout unless --out."""
    from dicomcast.auth.smart import generate_key

    pem = guard(lambda: generate_key(alg))
    if out is None:
        typer.echo(pem, nl=False)
        return
    try:
        handle = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        typer.echo(f"dicomcast: cannot write {out}: {exc.strerror}", err=True)
        raise typer.Exit(3) from None
    with os.fdopen(handle, "w") as file:
        file.write(pem)
    typer.echo(f"private key written to {out}; register its public half: dicomcast keys jwks")


@keys.command("jwks")
def keys_jwks(
    config: ConfigOption = None,
    key_file: Annotated[
        Path | None, typer.Option(help="A private key PEM (default: DICOMCAST_FHIR_PRIVATE_KEY).")
    ] = None,
) -> None:
    """Print the public JWKS of the FHIR private key, to register with the EHR."""
    from dicomcast.auth.smart import public_jwks

    settings = settings_from(config)

    def jwks() -> str:
        if key_file is not None:
            pem = key_file.read_text()
        elif settings.fhir_private_key is not None:
            pem = settings.fhir_private_key.get_secret_value()
        else:
            raise ConfigError("no private key: set DICOMCAST_FHIR_PRIVATE_KEY or give --key-file")
        return json.dumps(public_jwks(pem, settings.fhir_key_id), indent=2)

    typer.echo(guard(jwks))
