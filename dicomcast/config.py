"""Settings: `DICOMCAST_*` environment variables over an optional TOML/YAML file.

Precedence, highest first: environment, the config file (`--config` or `DICOMCAST_CONFIG`),
files in `DICOMCAST_SECRETS_DIR` (one file per setting, as Docker/Kubernetes secrets mount
them), defaults. Secrets are `SecretStr` and print as `**********` everywhere.
"""

from __future__ import annotations

import os
import socket
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dicomcast.errors import ConfigError
from dicomcast.http import RetryPolicy

PatientPolicy = Literal["fill-missing", "never", "overwrite"]
DeletedStudyPolicy = Literal["delete", "entered-in-error"]


class SourceSettings(BaseModel):
    """One DICOM server to follow; built from the flat `source_*` settings."""

    name: str
    kind: Literal["orthanc"]
    url: str
    public_url: str
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None


class Settings(BaseSettings):
    """Everything the worker can be told. Defaults suit a single Orthanc on one machine."""

    model_config = SettingsConfigDict(
        env_prefix="DICOMCAST_", extra="forbid", validate_default=True, secrets_dir=None
    )

    # --- the DICOM source
    source_name: str = Field("default", description="Stable name of the source (keys state).")
    source_kind: Literal["orthanc"] = "orthanc"
    source_url: str | None = Field(None, description="REST base URL of the DICOM server.")
    source_public_url: str | None = Field(
        None,
        description="DICOMweb base URL published in the FHIR Endpoint (default: URL/dicom-web).",
    )
    source_username: str | None = None
    source_password: SecretStr | None = None
    source_token: SecretStr | None = None

    # --- the FHIR server
    fhir_url: str | None = Field(None, description="FHIR R4 base URL.")
    fhir_token: SecretStr | None = Field(None, description="Static bearer token.")
    fhir_oauth_token_url: str | None = Field(
        None, description="OAuth2 client-credentials token URL."
    )
    fhir_client_id: str | None = None
    fhir_client_secret: SecretStr | None = None
    fhir_scope: str | None = None
    transaction_max_entries: int = Field(100, ge=1, description="Largest transaction Bundle sent.")

    # --- HTTP
    verify_tls: bool = True
    ca_bundle: Path | None = None
    http_timeout: float = Field(30.0, gt=0)
    http_retries: int = Field(
        4, ge=1, le=10, description="Tries per request for transient errors (1 = no retry)."
    )
    http_retry_base: float = Field(
        0.5, gt=0, description="First in-process retry delay in seconds; doubles, with jitter."
    )

    # --- state
    state_url: str = Field("sqlite:///dicomcast.db", description="SQLAlchemy URL of the state DB.")

    # --- mapping
    mapping_dir: Path | None = Field(None, description="Mapping folder (default: the bundled one).")
    patient_id_system: str | None = Field(
        None, description="Patient identifier system when the DICOM data names no issuer."
    )
    accession_system: str | None = Field(
        None, description="Accession number system when the DICOM data names no issuer."
    )
    issuer_systems: dict[str, str] = Field(
        default_factory=dict, description="IssuerOfPatientID / local issuer name -> system URI."
    )
    timezone: str = Field("UTC", description="IANA zone of DICOM times that carry no offset.")
    patient_policy: PatientPolicy = "fill-missing"
    deleted_study_policy: DeletedStudyPolicy = "delete"

    # --- scheduling
    worker_id: str = Field(
        default_factory=socket.gethostname,
        description="This worker's identity for study claims; unique per process when several "
        "workers share one state DB.",
    )
    poll_interval: float = Field(2.0, gt=0, description="Seconds between change-feed polls.")
    concurrency: int = Field(4, ge=1, le=64, description="Studies synced at once.")
    feed_page_size: int = Field(1000, ge=1, le=10000)
    stable_wait_max: float = Field(
        60.0, ge=0, description="Longest wait for a study to become stable before syncing anyway."
    )
    reconcile_interval: float = Field(
        300.0, gt=0, description="Seconds between scans for deletions the feed does not log."
    )
    max_attempts: int = Field(10, ge=1, description="Transient failures before a study is parked.")
    backoff_base: float = Field(5.0, gt=0)
    backoff_max: float = Field(600.0, gt=0)
    shutdown_timeout: float = Field(
        30.0, gt=0, description="Longest wait for in-flight studies after SIGTERM/SIGINT."
    )
    once_max_wait: float = Field(
        60.0, ge=0, description="`run --once` waits out retries due within this many seconds."
    )

    # --- the HTTP listener (/livez, /readyz, /metrics) of the long-running worker
    http_host: str = Field("127.0.0.1", description="Bind address; 0.0.0.0 in a container.")
    http_port: int = Field(9464, ge=0, le=65535, description="Listener port; 0 turns it off.")

    # --- logging
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "text"] = "auto"
    log_phi: bool = Field(False, description="Allow patient names/IDs/birth dates in logs.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The config file arrives as init kwargs; the environment must win over it.
        return env_settings, init_settings, file_secret_settings

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("source_url", "fhir_url", "source_public_url", "fhir_oauth_token_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    # --- derived views

    @property
    def source(self) -> SourceSettings:
        """The configured source; `ConfigError` when its URL is missing."""
        if not self.source_url:
            raise ConfigError(
                "DICOMCAST_SOURCE_URL is not set: which DICOM server should I follow?"
            )
        return SourceSettings(
            name=self.source_name,
            kind=self.source_kind,
            url=self.source_url,
            public_url=self.source_public_url or f"{self.source_url}/dicom-web",
            username=self.source_username,
            password=self.source_password,
            token=self.source_token,
        )

    @property
    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(self.http_retries, max_delay=30.0, base=self.http_retry_base)

    def require_worker_settings(self) -> None:
        """Check what `run` needs beyond the mapping-only settings."""
        missing = [
            name
            for name, value in (
                ("DICOMCAST_SOURCE_URL", self.source_url),
                ("DICOMCAST_FHIR_URL", self.fhir_url),
                ("DICOMCAST_PATIENT_ID_SYSTEM", self.patient_id_system),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"missing settings: {', '.join(missing)}")
        oauth = [self.fhir_oauth_token_url, self.fhir_client_id, self.fhir_client_secret]
        if any(oauth) and not all(oauth):
            raise ConfigError(
                "OAuth2 needs DICOMCAST_FHIR_OAUTH_TOKEN_URL, _FHIR_CLIENT_ID and "
                "_FHIR_CLIENT_SECRET together"
            )

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain values, secrets masked, credentials stripped from URLs."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                out[name] = "**********" if value.get_secret_value() else ""
            elif isinstance(value, str) and "://" in value:
                out[name] = mask_url(value)
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out


def mask_url(url: str) -> str:
    """Hide a password embedded in a URL (`postgresql://u:secret@h/db` -> `u:***@h`)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of settings at the top level")
    dicomcast_table = data.get("dicomcast")
    return dict(dicomcast_table) if isinstance(dicomcast_table, dict) else dict(data)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from env, file and overrides; raise `ConfigError` with a readable reason."""
    path = config_file or (Path(p) if (p := os.environ.get("DICOMCAST_CONFIG")) else None)
    values = _read_config_file(path) if path else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    secrets_dir = os.environ.get("DICOMCAST_SECRETS_DIR")
    try:
        if secrets_dir:
            return Settings(_secrets_dir=secrets_dir, **values)
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
