"""The logins' tokens: a static bearer token, one fetched and renewed (the base of every
OAuth2 login here), the client-credentials grant, and an Azure managed identity. Kept
apart from `dicomcast.auth`, which chooses among them, so the SMART and cloud logins build
on these without importing the module that imports them."""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import Any

import httpx

from dicomcast.errors import ConfigError, RetriableError


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
