"""Settings: where each value comes from and which wins, the one-source shorthand, masking."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomcast.cli import app
from dicomcast.config import load_settings, mask_url
from dicomcast.errors import ConfigError
from dicomcast.sandbox.samples import demo_studies, instances


def test_env_wins_over_file_and_secrets_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "dicomcast.toml"
    config.write_text(
        'fhir_url = "http://from-file/fhir"\nconcurrency = 7\n'
        'fhir_token = "tok-123"\n[issuer_systems]\nHOSP = "urn:oid:1.2"\n'
    )
    monkeypatch.setenv("DICOMCAST_FHIR_URL", "http://from-env/fhir/")
    monkeypatch.setenv("DICOMCAST_STATE_URL", "postgresql://u:pw@db:5432/dc")
    settings = load_settings(config)
    assert settings.fhir_url == "http://from-env/fhir"
    assert settings.concurrency == 7 and settings.issuer_systems == {"HOSP": "urn:oid:1.2"}
    public = settings.public_dict()
    assert public["fhir_token"] == "**********"
    assert public["state_url"] == "postgresql://u:***@db:5432/dc"
    assert "tok-123" not in str(public) and "pw" not in public["state_url"]
    assert mask_url("http://plain/x") == "http://plain/x"


def test_bad_settings_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="timezone"):
        load_settings(None, timezone="Mars/Olympus")
    with pytest.raises(ConfigError, match="concurrency"):
        load_settings(None, concurrency=0)
    with pytest.raises(ConfigError, match="DICOMCAST_SOURCE_URL"):
        load_settings(None, fhir_url="http://f").require_worker_settings()


def test_flags_beat_env_beat_file_beat_secrets_beat_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "DICOMCAST_PATIENT_ID_SYSTEM").write_text("urn:oid:4.secrets\n")
    (secrets / "DICOMCAST_CONCURRENCY").write_text("3\n")
    (secrets / "DICOMCAST_TIMEZONE").write_text("Asia/Tokyo\n")
    (secrets / "DICOMCAST_POLL_INTERVAL").write_text("9\n")
    config = tmp_path / "dicomcast.yaml"
    config.write_text("patient_id_system: urn:oid:3.file\nconcurrency: 5\ntimezone: Europe/Paris\n")
    monkeypatch.setenv("DICOMCAST_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("DICOMCAST_PATIENT_ID_SYSTEM", "urn:oid:2.env")
    monkeypatch.setenv("DICOMCAST_CONCURRENCY", "7")
    flagged = load_settings(config, patient_id_system="urn:oid:1.flag")
    assert flagged.patient_id_system == "urn:oid:1.flag"  # flag > env
    assert flagged.concurrency == 7  # env > file
    assert flagged.timezone == "Europe/Paris"  # file > secrets
    assert flagged.poll_interval == 9  # secrets > default
    assert flagged.backoff_max == 600  # the default
    assert load_settings(config).patient_id_system == "urn:oid:2.env"


def test_a_command_line_flag_beats_the_environment(tmp_path: Path) -> None:
    for number, ds in enumerate(instances(demo_studies()[4])):  # no issuer in the data
        ds.save_as(tmp_path / f"{number}.dcm", enforce_file_format=True)
    result = CliRunner().invoke(
        app,
        ["map", str(tmp_path), "--patient-id-system", "urn:oid:1.flag"],
        env={"DICOMCAST_PATIENT_ID_SYSTEM": "urn:oid:2.env"},
    )
    assert result.exit_code == 0, result.output
    assert "urn:oid:1.flag" in result.stdout and "urn:oid:2.env" not in result.stdout


def test_one_source_may_be_given_flat_and_each_field_keeps_the_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "DICOMCAST_SOURCE_PASSWORD").write_text("from-secrets\n")
    (secrets / "DICOMCAST_SOURCE_USERNAME").write_text("secret-user\n")
    config = tmp_path / "dicomcast.toml"
    config.write_text(
        'source_url = "http://pacs-from-file:8042"\nsource_username = "file-user"\n'
        '[source]\nname = "pacs"\n'
    )
    monkeypatch.setenv("DICOMCAST_SECRETS_DIR", str(secrets))
    monkeypatch.setenv("DICOMCAST_SOURCE_USERNAME", "env-user")
    settings = load_settings(config, source_public_url="https://pacs.example.org/dicom-web")
    (source,) = settings.source_list()
    assert source.url == "http://pacs-from-file:8042" and source.name == "pacs"
    assert source.username == "env-user"  # env > file > secrets
    assert source.password is not None and source.password.get_secret_value() == "from-secrets"
    assert source.public_url == "https://pacs.example.org/dicom-web"  # a flag
    assert "from-secrets" not in str(settings.public_dict())
    with pytest.raises(ConfigError, match="source_api_version"):
        load_settings(config, source_api_version="v9")


def test_a_missing_ca_file_is_a_setting_error_and_verify_off_is_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError, match=r"ca_bundle: .*not a readable file"):
        load_settings(None, ca_bundle=str(tmp_path / "missing.pem"))
    from dicomcast.app import build_app

    settings = load_settings(
        None,
        source_url="http://dicom.test",
        fhir_url="http://fhir.test",
        patient_id_system="urn:oid:1.2",
        state_url="sqlite://",
        verify_tls=False,
    )
    build_app(settings).close()
    assert "TLS certificate verification is OFF" in caplog.text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw@db:5432/dc", "postgresql://u:***@db:5432/dc"),
        ("postgresq:/u:pw@db/dc", "postgresq:/u:***@db/dc"),  # a typo'd scheme
        ("postgresql://db/dc?user=u&password=pw", "postgresql://db/dc?user=u&password=***"),
        ("postgresql+psycopg://u:pw@db:notaport/dc", "postgresql+psycopg://u:***@db:notaport/dc"),
    ],
)
def test_a_state_db_password_is_masked_however_the_url_is_written(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    settings = load_settings(None, state_url=url)
    assert "pw" not in str(settings.public_dict())
    from dicomcast.state.store import StateStore

    try:
        StateStore(url).close()
    except ConfigError as exc:  # a bad port or scheme: one line, no traceback, no password
        assert "pw" not in str(exc) and "***" in str(exc)


def test_credentials_in_a_source_url_are_never_published() -> None:
    from dicomcast.config import SourceSettings
    from dicomcast.mapping.settings import load_mappings, mapping_config
    from dicomcast.sources.azure import AzureDicomSource
    from dicomcast.sources.orthanc import OrthancSource

    settings = load_settings(
        None, source_url="http://dicomcast:S3cr3t@orthanc:8042", patient_id_system="urn:oid:1"
    )
    orthanc = OrthancSource(settings.first_source())
    assert orthanc.location("x").address == "http://orthanc:8042/dicom-web"
    endpoint = load_mappings(settings).map_endpoint(mapping_config(settings))
    assert endpoint["address"] == "http://orthanc:8042/dicom-web"
    assert "S3cr3t" not in str(endpoint) and "dicomcast@" not in str(endpoint)
    azure = AzureDicomSource(
        SourceSettings(
            name="cloud", kind="azure-dicom", url="https://u:S3cr3t@dicom.test", partitions=["*"]
        )
    )
    location = azure.location("research/1.2.3")
    assert "S3cr3t" not in f"{location.address} {location.scope}"
    with pytest.raises(ConfigError, match="must not carry a user name or password"):
        load_settings(None, source_url="http://o", source_public_url="https://u:pw@pacs/dicom-web")
