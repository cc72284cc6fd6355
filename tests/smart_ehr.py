"""An EHR's SMART Backend Services side, for the tests: an authorization server that
really verifies signed assertions against the client's registered JWKS (signature,
iss/sub/aud/exp/jti, a replayed jti refused) and issues short-lived tokens, and a gateway
(a real loopback HTTP server) that puts it in front of a real FHIR server."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from dicomcast.auth.smart import ASSERTION_TYPE
from tests.loopback import Answer, Loopback

TOKEN_URL = "http://fhir.test/token"  # on the FHIR server's origin, as Epic's is
CLIENT = "dicomcast-backend"


class AuthServer:
    """The EHR's authorization server: registered clients' JWKS, issued tokens."""

    def __init__(
        self, jwks: dict[str, Any], lifetime: int = 300, token_url: str = TOKEN_URL
    ) -> None:
        self.keys = KeySet.import_key_set(cast(Any, jwks))
        self.token_url = token_url
        self.lifetime = lifetime
        self.used_jti: set[str] = set()
        self.tokens: dict[str, float] = {}  # token -> expiry
        self.revoked = False
        self.assertions: list[dict[str, Any]] = []
        self.grant: str | None = None  # the scopes granted (None: all those asked for)

    def register(self, jwks: dict[str, Any]) -> None:
        """The EHR's administrator replaces the client's registered keys (a rotation)."""
        self.keys = KeySet.import_key_set(cast(Any, jwks))

    def admits(self, authorization: str) -> bool:
        """Is this `Authorization` header an unexpired token issued here?"""
        token = authorization.removeprefix("Bearer ")
        return self.tokens.get(token, 0) > time.time()

    def token(self, request: httpx.Request) -> httpx.Response:
        form = {k: v[-1] for k, v in parse_qs(request.content.decode()).items()}
        if self.revoked:
            return httpx.Response(401, json={"error": "invalid_client"})
        if form.get("grant_type") != "client_credentials" or (
            form.get("client_assertion_type") != ASSERTION_TYPE
        ):
            return httpx.Response(400, json={"error": "invalid_request"})
        try:
            decoded = jwt.decode(form["client_assertion"], self.keys, algorithms=["RS384", "ES384"])
        except (JoseError, KeyError, ValueError):
            return httpx.Response(401, json={"error": "invalid_client"})
        claims, now = decoded.claims, time.time()
        exp = float(claims.get("exp", 0))
        if (
            claims.get("iss") != CLIENT
            or claims.get("sub") != CLIENT
            or claims.get("aud") != self.token_url
            or not now < exp <= now + 300
            or claims.get("jti") in self.used_jti
        ):
            return httpx.Response(401, json={"error": "invalid_client"})
        self.used_jti.add(str(claims["jti"]))
        self.assertions.append({"header": decoded.header, "claims": claims})
        token = secrets.token_hex(8)
        self.tokens[token] = now + self.lifetime
        body = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": self.lifetime,
            "scope": form.get("scope", "") if self.grant is None else self.grant,
        }
        return httpx.Response(200, json=body)


FORWARDED = ("content-type", "accept", "prefer", "if-match", "if-none-exist")
RETURNED = (
    "content-type",
    "location",
    "content-location",
    "etag",
    "last-modified",
    "www-authenticate",
)  # what a client reads back (not Content-Encoding: httpx has decoded the body)


class EhrGateway(Loopback):
    """The EHR as a backend service meets it, on a real loopback port: the SMART
    configuration and token endpoint, and the FHIR API under `/fhir` proxied to a real
    FHIR server for unexpired tokens only (`/metadata` is public, as on EHRs)."""

    def __init__(self, upstream: str, jwks: dict[str, Any], lifetime: int = 300) -> None:
        super().__init__()
        self.fhir_url = f"{self.url}/fhir"
        self.auth = AuthServer(jwks, lifetime, token_url=f"{self.url}/token")
        self.refused = 0  # 401s answered to FHIR requests
        self.upstream = httpx.Client(base_url=upstream.rstrip("/") + "/", timeout=60)
        self._lock = threading.Lock()  # the authorization server's bookkeeping

    def close(self) -> None:
        self.upstream.close()

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        response = self._respond(method, target, headers, body)
        returned = {k: v for k, v in response.headers.items() if k.lower() in RETURNED}
        return response.status_code, returned, response.content

    def _respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> httpx.Response:
        path = urlsplit(target).path
        if path == "/fhir/.well-known/smart-configuration":
            return httpx.Response(
                200,
                json={
                    "token_endpoint": self.auth.token_url,
                    "grant_types_supported": ["client_credentials"],
                    "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                    "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
                },
            )
        if path == "/token" and method == "POST":
            with self._lock:
                return self.auth.token(httpx.Request(method, self.auth.token_url, content=body))
        if not path.startswith("/fhir"):
            return httpx.Response(404)
        if path != "/fhir/metadata":
            with self._lock:
                admitted = self.auth.admits(headers.get("authorization", ""))
            if not admitted:
                self.refused += 1
                return httpx.Response(
                    401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
                )
        forwarded = {k: v for k, v in headers.items() if k in FORWARDED}
        return self.upstream.request(
            method, target.removeprefix("/fhir").lstrip("/"), content=body, headers=forwarded
        )
