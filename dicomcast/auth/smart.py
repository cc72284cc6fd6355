"""SMART Backend Services: how a backend service logs in to an EHR's FHIR API.

An OAuth2 client-credentials grant where the client proves who it is with a JWT it signs
with its private key (`private_key_jwt`): RS384 for an RSA key, ES384 for an EC P-384 key,
the public half registered with the EHR as a JWKS (`dicomcast keys jwks`). The assertion
is what the SMART App Launch spec (Backend Services) asks: `iss` = `sub` = the client id,
`aud` = the token URL, `exp` five minutes ahead at most, a `jti` never used before. The
token URL comes from `<fhir>/.well-known/smart-configuration` unless one is configured.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from dicomcast.auth.tokens import ClientCredentials
from dicomcast.errors import ConfigError, RetriableError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 300  # seconds: the most the spec allows
# What dicomcast reads and writes (SMART v2 scopes: create, read, update, delete, search).
DEFAULT_SCOPE = (
    "system/Patient.crus system/ImagingStudy.cruds system/Endpoint.crus "
    "system/Observation.cruds system/ServiceRequest.rs"
)


SigningKey = RSAKey | ECKey


def signing_key(pem: str) -> tuple[SigningKey, str]:
    """The key and its JWS algorithm: RS384 for RSA, ES384 for EC P-384 (the two SMART
    names); anything else is a configuration error."""
    for kind, alg in ((RSAKey, "RS384"), (ECKey, "ES384")):
        try:
            key = kind.import_key(pem)
        except Exception:  # noqa: BLE001, S112 - not this kind of key: try the next
            continue
        if alg == "ES384" and key.as_dict(private=False).get("crv") != "P-384":
            raise ConfigError(
                "DICOMCAST_FHIR_PRIVATE_KEY is an EC key on another curve: "
                "SMART needs P-384 (ES384)"
            )
        if not key.is_private:
            raise ConfigError("DICOMCAST_FHIR_PRIVATE_KEY is a public key: give the private one")
        return key, alg
    raise ConfigError(
        "DICOMCAST_FHIR_PRIVATE_KEY is not an RSA or EC private key in PEM "
        "(SMART needs RS384 or ES384)"
    )


def public_jwks(pem: str, kid: str | None) -> dict[str, Any]:
    """The public JWKS to register with the EHR: the key's public half, its `kid` (the
    configured one, else the key's RFC 7638 thumbprint) and algorithm."""
    key, alg = signing_key(pem)
    public = dict(key.as_dict(private=False))
    public.update({"kid": kid or key.thumbprint(), "alg": alg, "use": "sig"})
    return {"keys": [public]}


def generate_key(alg: str) -> str:
    """A new private key as PKCS#8 PEM: RSA 3072 for RS384, P-384 for ES384."""
    if alg == "RS384":
        key: SigningKey = RSAKey.generate_key(3072)
    elif alg == "ES384":
        key = ECKey.generate_key("P-384")
    else:
        raise ConfigError(f"unknown algorithm {alg!r}: RS384 or ES384")
    return key.as_pem(private=True).decode()


class BackendServices(ClientCredentials):
    """Tokens by SMART Backend Services; cached, renewed before expiry and on a 401 (see
    `ClientCredentials`), with a fresh signed assertion each time."""

    def __init__(
        self,
        fhir_url: str,
        client_id: str,
        private_key: str,
        key_id: str | None,
        scope: str | None,
        *,
        token_url: str | None = None,
        verify: bool | str = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            token_url or "",
            client_id,
            "",
            scope or DEFAULT_SCOPE,
            verify=verify,
            transport=transport,
        )
        self.fhir_url = fhir_url.rstrip("/")
        self.key, self.alg = signing_key(private_key)
        self.key_id = key_id or self.key.thumbprint()
        self.method = f"SMART Backend Services ({self.alg}, kid {self.key_id})"

    def _form(self) -> dict[str, str]:
        if not self.token_url:
            self.token_url = self._discover()
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + ASSERTION_LIFETIME,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        header = {"alg": self.alg, "kid": self.key_id, "typ": "JWT"}
        assertion = jwt.encode(header, claims, self.key, algorithms=[self.alg])
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        if self.scope:
            form["scope"] = self.scope
        return form

    def _discover(self) -> str:
        """The token URL the FHIR server publishes (an outage while it cannot be read)."""
        url = f"{self.fhir_url}/.well-known/smart-configuration"
        try:
            response = self._http.get(url, headers={"Accept": "application/json"})
            found = json.loads(response.content).get("token_endpoint")
        except (httpx.HTTPError, ValueError, AttributeError):
            found = None
        if not isinstance(found, str) or not found.startswith(("https://", "http://")):
            raise RetriableError(
                "SMART configuration has no token_endpoint (set DICOMCAST_FHIR_OAUTH_TOKEN_URL)",
                outage=True,
            )
        # The signed assertion logs in as us: it goes only where the FHIR server's own
        # origin is, over TLS if the FHIR server uses it. Another origin (an EHR with a
        # separate authorization server) is trusted once an operator names it.
        fhir, token = httpx.URL(self.fhir_url), httpx.URL(found)
        if fhir.scheme == "https" and token.scheme != "https":
            raise RetriableError(
                f"refused the token endpoint {found[:200]!r} the SMART configuration names: "
                "it is plain http, so the signed assertion would travel in clear (set "
                "DICOMCAST_FHIR_OAUTH_TOKEN_URL to the https one)",
                outage=True,
            )
        if (token.scheme, token.host, token.port) != (fhir.scheme, fhir.host, fhir.port):
            raise RetriableError(
                f"refused the token endpoint {found[:200]!r} the SMART configuration names: "
                f"it is not on the FHIR server's origin ({fhir.scheme}://{fhir.netloc.decode()}); "
                "if that authorization server is the EHR's, set DICOMCAST_FHIR_OAUTH_TOKEN_URL",
                outage=True,
            )
        return found
