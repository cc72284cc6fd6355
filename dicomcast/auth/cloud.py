"""Cloud FHIR services' own logins: AWS Signature Version 4 (HealthLake) and Google
Application Default Credentials (Cloud Healthcare FHIR stores).

Both come from the cloud's own library, imported only when configured (optional extras
`dicomcast[aws]` and `dicomcast[google]`): botocore signs each request and finds the
credentials the way every AWS tool does (environment, profile, web identity / IRSA,
container or instance role, refreshed before they expire); google-auth finds ADC the way
gcloud does (GOOGLE_APPLICATION_CREDENTIALS, workload identity, the metadata server).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator
from typing import Any

import httpx

from dicomcast.auth.tokens import RenewingToken
from dicomcast.errors import ConfigError, RetriableError

HEALTHLAKE = "healthlake"
GOOGLE_SCOPE = "https://www.googleapis.com/auth/cloud-healthcare"
PUBSUB_SCOPE = "https://www.googleapis.com/auth/pubsub"
SIGNED = ("host", "content-type")  # plus the x-amz-* botocore adds; proxies keep these


def _botocore() -> Any:
    try:
        import botocore.session
    except ImportError as exc:
        raise ConfigError(
            f"aws-sigv4 needs botocore ({exc.name or exc} cannot be imported): "
            "pip install 'dicomcast[aws]'"
        ) from None
    return botocore.session


class AwsSigV4(httpx.Auth):
    """Every request signed with SigV4 by botocore's own signer, with the credentials the
    AWS chain gives (frozen per request: a refreshed session token is picked up)."""

    requires_request_body = True

    def __init__(
        self, region: str | None, service: str = HEALTHLAKE, credentials: Any = None
    ) -> None:
        session = _botocore().get_session()
        # botocore reads AWS_DEFAULT_REGION and the profile; the other SDKs' AWS_REGION too.
        self.region = (
            region or session.get_config_variable("region") or os.environ.get("AWS_REGION")
        )
        if not self.region:
            raise ConfigError(
                "aws-sigv4 needs a region: DICOMCAST_FHIR_REGION, AWS_REGION or AWS_DEFAULT_REGION"
            )
        self.service = service
        self.credentials = credentials or session.get_credentials()
        if self.credentials is None:
            raise ConfigError(
                "aws-sigv4 found no AWS credentials (environment, profile, web identity, "
                "container or instance role)"
            )

    def describe(self) -> str:
        source = getattr(self.credentials, "method", "") or "the AWS chain"
        return f"AWS SigV4 ({self.service}, {self.region}; credentials from {source})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import BotoCoreError

        try:
            frozen = self.credentials.get_frozen_credentials()
        except BotoCoreError as exc:  # an expired role or an unreachable metadata service
            raise RetriableError(
                f"AWS credentials unavailable: {type(exc).__name__}", outage=True
            ) from None
        headers = {k: v for k, v in request.headers.items() if k.lower() in SIGNED}
        signed = AWSRequest(
            method=request.method, url=str(request.url), data=request.content, headers=headers
        )
        SigV4Auth(frozen, self.service, self.region).add_auth(signed)
        for name, value in signed.headers.items():
            if name.lower() == "authorization" or name.lower().startswith("x-amz-"):
                request.headers[name] = value
        yield request


class GoogleCredentials(RenewingToken):
    """Access tokens from google-auth credentials, refreshed when google-auth says they
    are no longer valid (it keeps a margin before expiry), and once more on a 401."""

    def __init__(self, credentials: Any, request: Any) -> None:
        self.credentials = credentials
        self.request = request  # google-auth's transport for its own token requests
        self.account = str(getattr(credentials, "service_account_email", "") or "")
        self._lock = threading.Lock()

    def describe(self) -> str:
        who = f", service account {self.account}" if self.account else ""
        return f"Google Application Default Credentials{who}"

    def token(self, force: bool = False) -> str:
        from google.auth import exceptions

        with self._lock:
            if force or not self.credentials.valid:
                try:
                    self.credentials.refresh(self.request)
                except exceptions.GoogleAuthError as exc:
                    raise RetriableError(
                        f"Google credentials unavailable: {type(exc).__name__}", outage=True
                    ) from None
            return str(self.credentials.token)


def google_default(verify: bool | str = True, scope: str = GOOGLE_SCOPE) -> GoogleCredentials:
    """Application Default Credentials, scoped for the Cloud Healthcare API (or `scope`)."""
    try:
        import google.auth
        import urllib3
        from google.auth.transport.urllib3 import Request
    except ImportError as exc:
        raise ConfigError(
            f"google login needs google-auth and its urllib3 transport ({exc.name or exc} "
            "cannot be imported): pip install 'dicomcast[google]'"
        ) from None
    try:
        credentials, _project = google.auth.default(scopes=[scope])
    except google.auth.exceptions.DefaultCredentialsError as exc:
        raise ConfigError(f"Google Application Default Credentials: {exc}") from None
    pool = (
        urllib3.PoolManager(ca_certs=verify)
        if isinstance(verify, str)
        else urllib3.PoolManager(cert_reqs="CERT_REQUIRED" if verify else "CERT_NONE")
    )
    return GoogleCredentials(credentials, Request(pool))  # type: ignore[no-untyped-call]
