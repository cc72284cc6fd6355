"""How requests log in, for sources and the FHIR server alike: a static bearer token, basic
auth, an OAuth2 client-credentials grant, or an Azure managed identity (and for the FHIR
server SMART Backend Services, `smart`, and the clouds' own logins, `cloud`).

Settings name the way (`dicomcast.config` only holds values); this module turns them into
`httpx.Auth` objects. Tokens are cached and renewed before they expire, and once on a 401.

The token request is written here rather than taken from authlib, measured against
authlib 1.9: its httpx integration now warns that httpx is deprecated in favour of httpx2,
and its `private_key_jwt` signs assertions valid for an hour where SMART allows five
minutes. What is left here is the form and the answer; JOSE is joserfc's.
"""

from __future__ import annotations

import httpx
from pydantic import SecretStr

from dicomcast.auth.tokens import (
    AzureCredential,
    BearerToken,
    ClientCredentials,
    RenewingToken,
    managed_identity,
)
from dicomcast.config import Settings, SourceSettings
from dicomcast.errors import ConfigError
from dicomcast.urls import mask_url

__all__ = [
    "AzureCredential",
    "BearerToken",
    "ClientCredentials",
    "RenewingToken",
    "describe",
    "fhir_auth",
    "make_auth",
    "managed_identity",
    "source_auth",
    "tls_verify",
]


def make_auth(
    *,
    token: SecretStr | None = None,
    username: str | None = None,
    password: SecretStr | None = None,
    token_url: str | None = None,
    client_id: str | None = None,
    client_secret: SecretStr | None = None,
    scope: str | None = None,
    use_managed_identity: bool = False,
    verify: bool | str = True,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Auth | None:
    """The one way to log in that the settings name (they were checked to name one)."""
    if token is not None:
        return BearerToken(token.get_secret_value())
    if username is not None:
        return httpx.BasicAuth(username, password.get_secret_value() if password else "")
    if use_managed_identity:
        if not scope:
            raise ConfigError("managed identity needs a scope (the resource's /.default)")
        return managed_identity(scope, client_id)
    if client_secret is not None and client_id and token_url:
        return ClientCredentials(
            token_url,
            client_id,
            client_secret.get_secret_value(),
            scope,
            verify=verify,
            transport=transport,
        )
    return None


def describe(auth: httpx.Auth | None) -> str:
    """How requests log in, in words for `check-config`: the method, and for a grant the
    scopes the last token was granted and any asked for but not granted. No secrets."""
    if auth is None:
        return "no login"
    if callable(own := getattr(auth, "describe", None)):  # the cloud logins say themselves
        return str(own())
    if isinstance(auth, BearerToken):
        return "static bearer token"
    if isinstance(auth, httpx.BasicAuth):
        return "basic auth"
    if isinstance(auth, AzureCredential):
        return f"Azure managed identity (scope {auth.scope})"
    if isinstance(auth, ClientCredentials):
        method = getattr(auth, "method", "OAuth2 client credentials")
        words = f"{method}, token URL {mask_url(auth.token_url)}"
        if auth.granted:
            words += f"; granted: {auth.granted}"
            missing = sorted(set((auth.scope or "").split()) - set(auth.granted.split()))
            if missing:
                words += f"; NOT granted: {' '.join(missing)}"
        return words
    return type(auth).__name__


def tls_verify(settings: Settings) -> bool | str:
    """What TLS verification uses: a CA bundle file, or on/off (on by default)."""
    return str(settings.ca_bundle) if settings.ca_bundle else settings.verify_tls


def source_auth(
    source: SourceSettings,
    *,
    verify: bool | str = True,
    transport: httpx.BaseTransport | None = None,
) -> httpx.Auth | None:
    """How requests to one source log in (None: an open server)."""
    if source.auth == "google":
        from dicomcast.auth import cloud

        return cloud.google_default(verify)
    return make_auth(
        token=source.token,
        username=source.username,
        password=source.password,
        token_url=source.token_url,
        client_id=source.client_id,
        client_secret=source.client_secret,
        scope=source.oauth_scope,
        use_managed_identity=source.managed_identity,
        verify=verify,
        transport=transport,
    )


def fhir_auth(
    settings: Settings, transport: httpx.BaseTransport | None = None
) -> httpx.Auth | None:
    """SMART Backend Services (a private key), client credentials (any OAuth2 server, or
    Entra ID by tenant), a managed identity, or a static token; for Azure the scope
    defaults to the FHIR service's `/.default`."""
    if settings.fhir_auth is not None:
        from dicomcast.auth import cloud

        if settings.fhir_auth == "aws-sigv4":
            return cloud.AwsSigV4(settings.fhir_region)
        return cloud.google_default(tls_verify(settings))
    if settings.fhir_private_key is not None and settings.fhir_url and settings.fhir_client_id:
        from dicomcast.auth.smart import BackendServices

        return BackendServices(
            settings.fhir_url,
            settings.fhir_client_id,
            settings.fhir_private_key.get_secret_value(),
            settings.fhir_key_id,
            settings.fhir_scope,
            token_url=settings.fhir_token_url,
            verify=tls_verify(settings),
            transport=transport,
        )
    azure_scope = f"{settings.fhir_url}/.default" if settings.fhir_url else None
    credentials = settings.fhir_client_secret is not None and settings.fhir_token_url
    return make_auth(
        token=None if credentials else settings.fhir_token,
        token_url=settings.fhir_token_url,
        client_id=settings.fhir_client_id,
        client_secret=settings.fhir_client_secret,
        scope=settings.fhir_scope
        or (azure_scope if settings.fhir_tenant_id or settings.fhir_managed_identity else None),
        use_managed_identity=settings.fhir_managed_identity,
        verify=tls_verify(settings),
        transport=transport,
    )
