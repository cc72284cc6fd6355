"""What an AWS service checks of a SigV4-signed request, recomputed with botocore from what
arrived: the key, region and service of the credential scope, the session token, the age,
and the signature over the signed headers and the body. Shared by the AWS doubles."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

KEY, SECRET, SESSION = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token-1"
REGION = "eu-west-1"
HEALTHLAKE, MEDICAL_IMAGING = "healthlake", "medical-imaging"
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<day>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<names>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


def sigv4_refusal(
    method: str, url: str, headers: dict[str, str], body: bytes, service: str
) -> str | None:
    """Why the service would refuse this request (None: it would not)."""
    lower = {k.lower(): v for k, v in headers.items()}
    said = AUTHORIZATION.fullmatch(lower.get("authorization", ""))
    if said is None:
        return "MissingAuthenticationToken"
    if (said["key"], said["region"], said["service"]) != (KEY, REGION, service):
        return "InvalidClientTokenId or wrong scope"
    if lower.get("x-amz-security-token") != SESSION:
        return "the session token is missing"
    stamp = lower["x-amz-date"]
    signed_at = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    if abs((dt.datetime.now(dt.UTC) - signed_at).total_seconds()) > 300:
        return "the signature is stale"
    names = said["names"].split(";")
    if "host" not in names:
        return "the host is not signed"
    arrived = AWSRequest(
        method=method, url=url, data=body, headers={name: lower[name] for name in names}
    )
    arrived.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(KEY, SECRET, SESSION), service, REGION)
    canonical = signer.canonical_request(arrived)
    expected = signer.signature(signer.string_to_sign(arrived, canonical), arrived)
    return None if expected == said["signature"] else "SignatureDoesNotMatch"


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> Iterator[None]:
    """Credentials from the environment, the first link of the AWS chain; no files."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", f"{tmp_path}/no-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp_path}/no-credentials")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield
