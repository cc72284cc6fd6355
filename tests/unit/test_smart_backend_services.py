"""SMART Backend Services against a test authorization server that really verifies the
signed assertion with the registered public key (signature, iss/sub/aud/exp/jti, a
replayed jti refused), and a FHIR server that admits only the tokens it issued."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest
from joserfc.jwk import ECKey
from typer.testing import CliRunner

from dicomcast.auth import describe
from dicomcast.auth.smart import BackendServices, generate_key, public_jwks
from dicomcast.cli import app
from dicomcast.config import load_settings
from dicomcast.errors import ConfigError, RetriableError
from dicomcast.sandbox.samples import bulk_studies
from tests.fakes import FakeSource, dicom_json, fake_worker
from tests.fhir_fake import FakeFhir
from tests.smart_ehr import CLIENT, TOKEN_URL, AuthServer

FHIR = "http://fhir.test/fhir"


def network(auth: AuthServer, fhir: FakeFhir) -> httpx.MockTransport:
    """The EHR: its SMART configuration, its token endpoint, and a FHIR API that admits
    only unexpired tokens the authorization server issued."""

    def answer(request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        if url == f"{FHIR}/.well-known/smart-configuration":
            return httpx.Response(200, json={"token_endpoint": TOKEN_URL})
        if url == TOKEN_URL:
            return auth.token(request)
        if not auth.admits(request.headers.get("Authorization", "")):
            return httpx.Response(401, json={"resourceType": "OperationOutcome", "issue": []})
        return fhir.handle_request(request)

    return httpx.MockTransport(answer)


def one_study() -> FakeSource:
    (spec,) = bulk_studies(1, 2, patients=1, prefix="smart")
    return FakeSource({spec.study_uid: dicom_json(spec)})


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_a_study_is_written_with_a_token_got_by_a_signed_assertion(
    tmp_path: Path, alg: str
) -> None:
    pem = generate_key(alg)
    auth, fhir = AuthServer(public_jwks(pem, "key-1")), FakeFhir()
    worker = fake_worker(
        tmp_path,
        network(auth, fhir),
        one_study(),
        fhir_url=FHIR,
        fhir_client_id=CLIENT,
        fhir_private_key=pem,
        fhir_key_id="key-1",
    )
    try:
        assert worker.run_once() == 0
    finally:
        worker.close()
        worker.app.close()
    assert len(fhir.all("ImagingStudy")) == 1
    (assertion,) = auth.assertions  # one token served the whole run
    assert assertion["header"] == {"alg": alg, "kid": "key-1", "typ": "JWT"}
    claims = assertion["claims"]
    assert claims["exp"] - claims["iat"] <= 300


def test_an_expired_or_revoked_token_is_renewed_with_a_fresh_assertion() -> None:
    pem = generate_key("ES384")
    auth = AuthServer(public_jwks(pem, None), lifetime=300)
    client = BackendServices(FHIR, CLIENT, pem, None, None, transport=network(auth, FakeFhir()))
    first = client.token()
    assert client.token() == first  # cached
    auth.tokens.clear()  # the EHR forgot it (revoked, or expired early)
    with httpx.Client(transport=network(auth, FakeFhir()), auth=client) as http:
        assert http.get(f"{FHIR}/metadata").status_code == 200  # a 401, then a new token
    assert len(auth.assertions) == 2
    assert len({a["claims"]["jti"] for a in auth.assertions}) == 2  # never the same jti
    assert "system/ImagingStudy.cruds" in client.granted  # the default SMART v2 scopes


def test_a_revoked_client_is_an_outage_that_says_why() -> None:
    pem = generate_key("ES384")
    auth = AuthServer(public_jwks(pem, None))
    auth.revoked = True
    client = BackendServices(FHIR, CLIENT, pem, None, None, transport=network(auth, FakeFhir()))
    with pytest.raises(RetriableError, match="token endpoint answered 401 invalid_client") as err:
        client.token()
    assert err.value.outage


def test_an_assertion_signed_by_another_key_is_refused() -> None:
    registered, other = generate_key("ES384"), generate_key("ES384")
    auth = AuthServer(public_jwks(registered, "k"))
    client = BackendServices(FHIR, CLIENT, other, "k", None, transport=network(auth, FakeFhir()))
    with pytest.raises(RetriableError, match="401 invalid_client"):
        client.token()


def test_keys_the_smart_spec_does_not_name_are_refused() -> None:
    p256 = ECKey.generate_key("P-256").as_pem(private=True).decode()
    with pytest.raises(ConfigError, match="P-384"):
        BackendServices(FHIR, CLIENT, p256, None, None)
    public = json.dumps(public_jwks(generate_key("ES384"), None))
    with pytest.raises(ConfigError, match="not an RSA or EC private key"):
        BackendServices(FHIR, CLIENT, public, None, None)
    settings = load_settings(
        None,
        source_url="http://dicom.test",
        fhir_url=FHIR,
        patient_id_system="urn:oid:1.2.3",
        fhir_private_key=generate_key("ES384"),
    )
    with pytest.raises(ConfigError, match="FHIR_CLIENT_ID"):
        settings.require_worker_settings()


def test_keys_generate_writes_a_private_key_and_jwks_prints_only_its_public_half(
    tmp_path: Path,
) -> None:
    runner = CliRunner()
    out = tmp_path / "fhir-key.pem"
    made = runner.invoke(app, ["keys", "generate", "--alg", "RS384", "--out", str(out)])
    assert made.exit_code == 0, made.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    again = runner.invoke(app, ["keys", "generate", "--out", str(out)])
    assert again.exit_code == 3  # never overwritten
    shown = runner.invoke(app, ["keys", "jwks", "--key-file", str(out)])
    assert shown.exit_code == 0, shown.output
    (key,) = json.loads(shown.stdout)["keys"]
    assert key["alg"] == "RS384" and key["kty"] == "RSA" and key["kid"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(key)  # nothing private


def test_check_config_names_the_login_and_scopes_not_granted() -> None:
    pem = generate_key("ES384")
    auth = AuthServer(public_jwks(pem, "k1"))
    auth.grant = "system/Patient.crus system/ImagingStudy.cruds"
    client = BackendServices(FHIR, CLIENT, pem, "k1", None, transport=network(auth, FakeFhir()))
    client.token()
    said = describe(client)
    assert said.startswith(
        "SMART Backend Services (ES384, kid k1), token URL http://fhir.test/token"
    )
    assert "granted: system/Patient.crus system/ImagingStudy.cruds" in said
    assert "NOT granted: system/Endpoint.crus system/Observation.cruds" in said
    assert pem.split("\n")[1] not in said  # nothing of the key


@pytest.mark.parametrize(
    ("fhir", "published", "why"),
    [
        ("https://ehr.test/fhir", "http://ehr.test/token", "plain http"),
        ("https://ehr.test/fhir", "https://elsewhere.test/token", "not on the FHIR server"),
        ("https://ehr.test/fhir", "https://ehr.test:8443/token", "not on the FHIR server"),
    ],
)
def test_a_published_token_endpoint_off_the_fhir_origin_gets_no_assertion(
    fhir: str, published: str, why: str
) -> None:
    pem = generate_key("ES384")
    sent: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(str(request.url))
        return httpx.Response(200, json={"token_endpoint": published})

    client = BackendServices(fhir, CLIENT, pem, None, None, transport=httpx.MockTransport(answer))
    with pytest.raises(RetriableError, match=why) as refused:
        client.token()
    assert refused.value.outage and "DICOMCAST_FHIR_OAUTH_TOKEN_URL" in str(refused.value)
    assert sent == [f"{fhir}/.well-known/smart-configuration"]  # the assertion never left


def test_a_token_endpoint_the_operator_names_may_be_on_another_origin() -> None:
    pem = generate_key("ES384")
    auth = AuthServer(public_jwks(pem, None), token_url="https://authorization.test/token")

    def answer(request: httpx.Request) -> httpx.Response:
        return auth.token(request)

    client = BackendServices(
        "https://ehr.test/fhir",
        CLIENT,
        pem,
        None,
        None,
        token_url="https://authorization.test/token",
        transport=httpx.MockTransport(answer),
    )
    assert client.token()
