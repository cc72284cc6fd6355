"""The clouds' own FHIR logins, each run through its real library: AWS SigV4 signed by
botocore (and checked here by recomputing the signature with botocore, as HealthLake
does), and Google Application Default Credentials, where google-auth itself reads a
service-account key and makes its JWT-bearer grant against a loopback token endpoint."""

from __future__ import annotations

import http.server
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from dicomcast.auth import describe
from dicomcast.auth.cloud import GOOGLE_SCOPE, PUBSUB_SCOPE, AwsSigV4
from dicomcast.config.source import SourceSettings
from dicomcast.errors import ConfigError
from dicomcast.sandbox.samples import bulk_studies
from dicomcast.sources import registry
from dicomcast.sources.base import Notifications, SourceContext
from dicomcast.sources.dicomweb import DicomwebSource
from tests.fakes import FakeSource, dicom_json, fake_worker
from tests.fhir_fake import FakeFhir, outcome
from tests.sigv4 import HEALTHLAKE, REGION, SECRET, sigv4_refusal

AUDIENCE = "https://oauth2.googleapis.com/token"  # what Google checks, wherever it is sent


class HealthLake(httpx.MockTransport):
    """A FHIR API that admits only requests SigV4-signed for HealthLake with the known
    credentials: the signature is recomputed by botocore from what arrived."""

    def __init__(self, inner: FakeFhir) -> None:
        self.inner = inner
        self.checked = 0

        def answer(request: httpx.Request) -> httpx.Response:
            refusal = self.refusal(request)
            if refusal:
                return outcome(403, refusal)
            self.checked += 1
            return inner.handle_request(request)

        super().__init__(answer)

    def refusal(self, request: httpx.Request) -> str | None:
        return sigv4_refusal(
            request.method, str(request.url), dict(request.headers), request.content, HEALTHLAKE
        )


def one_study() -> FakeSource:
    (spec,) = bulk_studies(1, 2, patients=1, prefix="cloud")
    return FakeSource({spec.study_uid: dicom_json(spec)})


@pytest.mark.usefixtures("aws_environment")
def test_every_request_to_healthlake_is_signed_with_the_aws_chains_credentials(
    tmp_path: Path,
) -> None:
    fhir = FakeFhir()
    healthlake = HealthLake(fhir)
    worker = fake_worker(tmp_path, healthlake, one_study(), fhir_auth="aws-sigv4")
    try:
        assert worker.run_once() == 0
        said = describe(worker.app.fhir.http.auth)
    finally:
        worker.close()
        worker.app.close()
    assert [len(fhir.all(k)) for k in ("Endpoint", "Patient", "ImagingStudy")] == [1, 1, 1]
    assert healthlake.checked == len(fhir.requests) >= 3  # every one, reads and writes
    assert said == f"AWS SigV4 (healthlake, {REGION}; credentials from env)"
    assert SECRET not in said


@pytest.mark.usefixtures("aws_environment")
def test_a_body_changed_after_signing_is_refused() -> None:
    healthlake = HealthLake(FakeFhir())
    with httpx.Client(auth=AwsSigV4(None), transport=healthlake) as client:
        request = client.build_request("POST", "https://healthlake.test/r4/", json={"a": 1})
        signed = next(client.auth.auth_flow(request))  # type: ignore[union-attr]
        assert healthlake.refusal(signed) is None
        tampered = httpx.Request("POST", signed.url, headers=signed.headers, content=b'{"a": 2}')
        assert healthlake.refusal(tampered) == "SignatureDoesNotMatch"


def test_sigv4_without_credentials_or_region_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    with pytest.raises(ConfigError, match="needs a region"):
        AwsSigV4(None)
    with pytest.raises(ConfigError, match="found no AWS credentials"):
        AwsSigV4(REGION)


# --- Google


class TokenEndpoint(http.server.ThreadingHTTPServer):
    """Google's OAuth2 token endpoint as far as a service account uses it: a JWT-bearer
    grant (RFC 7523) whose assertion is signed with the account's key, for a scope."""

    def __init__(self, public: RSAKey) -> None:
        self.public = public
        self.issued: list[str] = []
        self.scopes: dict[str, str] = {}  # token -> the scope it was issued for
        self.serial = itertools.count(1)
        super().__init__(("127.0.0.1", 0), TokenHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/token"


class TokenHandler(http.server.BaseHTTPRequestHandler):
    server: TokenEndpoint

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        status = 400
        body: dict[str, object] = {"error": "invalid_grant"}
        if form.get("grant_type") == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            try:
                token = jwt.decode(form["assertion"][0], self.server.public, algorithms=["RS256"])
            except Exception:  # any bad assertion is an invalid grant
                token = None
            claims = token.claims if token else {}
            scope = claims.get("scope", "")
            if claims.get("aud") == AUDIENCE and scope in (GOOGLE_SCOPE, PUBSUB_SCOPE):
                access = f"ya29.token-{next(self.server.serial)}"
                self.server.issued.append(access)
                self.server.scopes[access] = scope
                status = 200
                body = {"access_token": access, "expires_in": 3600, "token_type": "Bearer"}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def google_account(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[TokenEndpoint]:
    key = RSAKey.generate_key(2048)
    endpoint = TokenEndpoint(RSAKey.import_key(key.as_dict(private=False)))
    thread = threading.Thread(target=endpoint.serve_forever, daemon=True)
    thread.start()
    account = {
        "type": "service_account",
        "project_id": "hospital-imaging",
        "private_key_id": "k1",
        "private_key": key.as_pem(private=True).decode(),
        "client_email": "dicomcast@hospital-imaging.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": endpoint.url,
    }
    path = tmp_path / "account.json"
    path.write_text(json.dumps(account))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    yield endpoint
    endpoint.shutdown()
    endpoint.server_close()


class CloudHealthcare(httpx.MockTransport):
    """A FHIR store admitting only tokens the endpoint issued and not revoked."""

    def __init__(self, inner: FakeFhir, endpoint: TokenEndpoint) -> None:
        self.revoked: set[str] = set()

        def answer(request: httpx.Request) -> httpx.Response:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if token not in endpoint.issued or token in self.revoked:
                return outcome(401, "invalid credentials")
            return inner.handle_request(request)

        super().__init__(answer)


def test_google_application_default_credentials_log_in_and_renew_a_revoked_token(
    tmp_path: Path, google_account: TokenEndpoint
) -> None:
    fhir = FakeFhir()
    store = CloudHealthcare(fhir, google_account)
    source = one_study()
    worker = fake_worker(tmp_path, store, source, fhir_auth="google")
    try:
        assert worker.run_once() == 0
        assert google_account.issued == ["ya29.token-1"]
        said = describe(worker.app.fhir.http.auth)
        store.revoked.add("ya29.token-1")  # revoked early: a 401, one fresh token, go on
        (spec,) = bulk_studies(1, 3, patients=1, prefix="cloud")
        (key,) = source.studies
        source.studies[key] = dicom_json(spec)
        source.feed.append(key)
        assert worker.run_once() == 0
    finally:
        worker.close()
        worker.app.close()
    assert google_account.issued == ["ya29.token-1", "ya29.token-2"]
    (study,) = fhir.all("ImagingStudy")
    assert study["numberOfInstances"] == 3
    assert said == (
        "Google Application Default Credentials, service account "
        "dicomcast@hospital-imaging.iam.gserviceaccount.com"
    )


def test_cloud_logins_exclude_the_other_ways_in() -> None:
    from dicomcast.config import load_settings

    settings = load_settings(
        None,
        fhir_url="https://fhir.test",
        fhir_auth="aws-sigv4",
        fhir_token="t",
        source_url="http://o",
        patient_id_system="urn:x",
    )
    with pytest.raises(ConfigError, match="logs in by itself"):
        settings.require_worker_settings()


def test_a_google_dicom_store_is_followed_with_application_default_credentials(
    google_account: TokenEndpoint,
) -> None:
    """`kind=dicomweb` with `auth=google`: every QIDO-RS request carries a token that
    google-auth got for the service account (the store admits no other)."""
    base = "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/dicomStores/s"
    seen: list[str] = []

    def store(request: httpx.Request) -> httpx.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        seen.append(token)
        if token not in google_account.issued:
            return httpx.Response(401)
        return httpx.Response(200, json=[])

    settings = SourceSettings(kind="dicomweb", url=f"{base}/dicomWeb", auth="google")
    source = DicomwebSource(settings, transport=httpx.MockTransport(store))
    try:
        assert "answers QIDO-RS" in source.check()
    finally:
        source.close()
    assert seen == ["ya29.token-1"]
    with pytest.raises(ValueError, match="one way to log in"):
        SourceSettings(kind="dicomweb", url=f"{base}/dicomWeb", auth="google", token="t")


def test_a_google_dicom_stores_notifications_are_pulled_with_a_pubsub_token(
    google_account: TokenEndpoint,
) -> None:
    """With a subscription, Pub/Sub is asked with a token for its own scope, and the
    store with one for the Cloud Healthcare API's: each admits only its own."""
    base = "https://healthcare.googleapis.com/v1/projects/p/locations/l/datasets/d/dicomStores/s"
    subscription = "projects/hospital-imaging/subscriptions/dicomcast"
    scopes: list[tuple[str, str]] = []

    def google(request: httpx.Request) -> httpx.Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        scope = google_account.scopes.get(token, "")
        scopes.append((request.url.host, scope))
        wanted = PUBSUB_SCOPE if request.url.host == "pubsub.googleapis.com" else GOOGLE_SCOPE
        if scope != wanted:
            return httpx.Response(403, json={"error": {"code": 403, "status": "PERMISSION_DENIED"}})
        if request.url.path == f"/v1/{subscription}:pull":
            return httpx.Response(200, json={})
        return httpx.Response(200, json=[])

    settings = SourceSettings(
        kind="dicomweb", url=f"{base}/dicomWeb", auth="google", pubsub_subscription=subscription
    )
    source = registry.build(settings, SourceContext(transport=httpx.MockTransport(google)))
    try:
        assert isinstance(source, Notifications)
        assert source.notifications(10).receipt == []
        assert "answers QIDO-RS" in source.check()
    finally:
        source.close()
    assert scopes == [
        ("pubsub.googleapis.com", PUBSUB_SCOPE),
        ("healthcare.googleapis.com", GOOGLE_SCOPE),
    ]
