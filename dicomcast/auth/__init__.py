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

import threading
import time
from collections.abc import Generator
from typing import Any

import httpx
from pydantic import SecretStr

from dicomcast.config import Settings, SourceSettings
from dicomcast.errors import ConfigError, RetriableError
from dicomcast.urls import mask_url


class BearerToken(httpx.Auth):
    """A static bearer token (never printed: httpx does not log headers)."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class RenewingToken(httpx.Auth):
    """A bearer token fetched on demand and cached; a 401 fetches a fresh one once (the
    cached one was revoked or rotated, or expired early)."""

    requires_response_body = True

    def token(self, force: bool = False) -> str:
        raise NotImplementedError

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        response = yield request
        if response.status_code == 401:
            request.headers["Authorization"] = f"Bearer {self.token(force=True)}"
            yield request


class ClientCredentials(RenewingToken):
    """OAuth2 client-credentials grant (Microsoft Entra ID, Keycloak, SMART backend services).

    The token is cached and renewed before it expires (5 minutes early, or a fifth of its
    lifetime for short-lived ones), and once more when the server answers 401 (a revoked or
    rotated token)."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None,
        *,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self._token: str | None = None
        self.granted = ""  # the scopes the last token was granted (for check-config)
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self._http = httpx.Client(verify=verify, transport=transport, timeout=30)

    def _form(self) -> dict[str, str]:
        """The token request's form: the client's id and secret (see `smart` for a signed
        assertion in their place)."""
        data = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self.client_secret,
        }
        if self.scope:
            data["scope"] = self.scope
        return data

    def _fetch(self) -> str:
        data = self._form()
        try:
            response = self._http.post(self.token_url, data=data)
        except httpx.HTTPError as exc:
            raise RetriableError(
                f"token endpoint unreachable: {type(exc).__name__}", outage=True
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict):
            # Entra ID names the problem in `error` (invalid_client, unauthorized_client, ...);
            # the description may quote the client id, never the secret.
            code = body.get("error", "") if isinstance(body, dict) else ""
            raise RetriableError(
                f"token endpoint answered {response.status_code} {code}".rstrip(),
                outage=True,
                status=response.status_code,
            )
        try:
            self._token = str(body["access_token"])
            lifetime = float(body.get("expires_in", 3600))
            self.granted = str(body.get("scope") or "")
        except (KeyError, TypeError, ValueError):
            raise RetriableError("token endpoint answer has no access_token", outage=True) from None
        self._expires_at = time.monotonic() + lifetime - min(300.0, lifetime / 5)
        return self._token

    def token(self, force: bool = False) -> str:
        with self._lock:
            if force or self._token is None or time.monotonic() >= self._expires_at:
                return self._fetch()
            return self._token


class AzureCredential(RenewingToken):
    """Tokens from an `azure-identity` credential (managed identity, workload identity, ...),
    cached until five minutes before they expire; a 401 asks for a fresh one once.

    `credential` is anything with azure-identity's `get_token(scope)`; the library itself is
    an optional extra (`dicomcast[azure]`), imported only when this is configured."""

    def __init__(self, credential: Any, scope: str) -> None:
        self.credential = credential
        self.scope = scope
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock = threading.Lock()

    def token(self, force: bool = False) -> str:
        with self._lock:
            if force or self._token is None or time.time() >= self._expires_on - 300:
                try:
                    access = self.credential.get_token(self.scope)
                except Exception as exc:  # noqa: BLE001  # azure-identity raises many kinds
                    raise RetriableError(
                        f"managed identity token unavailable: {type(exc).__name__}", outage=True
                    ) from None
                self._token, self._expires_on = str(access.token), float(access.expires_on)
            return self._token


def managed_identity(scope: str, client_id: str | None = None) -> AzureCredential:
    """An `AzureCredential` from azure-identity: a user-assigned managed identity when
    `client_id` is given, else the DefaultAzureCredential chain."""
    try:
        from azure import identity  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            f"managed identity needs azure-identity ({exc.name or exc} cannot be imported): "
            "pip install 'dicomcast[azure]'"
        ) from None
    credential = (
        identity.ManagedIdentityCredential(client_id=client_id)
        if client_id
        else identity.DefaultAzureCredential()
    )
    return AzureCredential(credential, scope)


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
