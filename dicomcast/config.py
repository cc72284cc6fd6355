"""Settings: `DICOMCAST_*` environment variables over an optional TOML/YAML file.

Precedence, highest first: environment, the config file (`--config` or `DICOMCAST_CONFIG`),
files in `DICOMCAST_SECRETS_DIR` (one file per setting, as Docker/Kubernetes secrets mount
them), defaults. Secrets are `SecretStr` and print as `**********` everywhere.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
import zoneinfo
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from dicomcast.errors import ConfigError
from dicomcast.model import DeletedStudyPolicy, PatientPolicy
from dicomcast.urls import mask_url

__all__ = ["DeletedStudyPolicy", "PatientPolicy", "Settings", "SourceSettings", "mask_url"]


SourceKind = Literal["orthanc", "azure-dicom"]
ApiVersion = Literal["v1", "v2"]
ENTRA_LOGIN = "https://login.microsoftonline.com"
AZURE_DICOM_SCOPE = "https://dicom.healthcareapis.azure.com/.default"
DEFAULT_PARTITION = "Microsoft.Default"
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PARTITION_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # the service's own rule


def resolve_token_url(explicit: str | None, tenant_id: str | None) -> str | None:
    """The OAuth2 token URL: the one given, else Microsoft Entra ID's for the tenant."""
    if explicit:
        return explicit
    return f"{ENTRA_LOGIN}/{tenant_id}/oauth2/v2.0/token" if tenant_id else None


class SourceSettings(BaseModel):
    """One DICOM server to follow: from the `sources` list, or the flat `source_*` settings.

    Authentication is one of: a static bearer `token`; `username`/`password` (Orthanc);
    OAuth2 client credentials (`client_id`, `client_secret`, and `tenant_id` for Microsoft
    Entra ID or an explicit `oauth_token_url`); or `managed_identity` (needs the
    `dicomcast[azure]` extra). Nothing at all means an open server.
    """

    model_config = {"extra": "forbid"}

    name: str = "default"
    kind: SourceKind = "orthanc"
    url: str
    public_url: str | None = Field(
        None, description="Base URL published in FHIR Endpoints (default: derived from url)."
    )
    api_version: ApiVersion = Field("v2", description="Microsoft DICOM service API version.")
    partitions: list[str] | None = Field(
        None,
        description="Microsoft DICOM service data partitions to follow; unset when the service "
        "has no partitioning, ['*'] for all.",
    )
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    oauth_token_url: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scope: str | None = None
    managed_identity: bool = False
    patient_id_system: str | None = Field(
        None, description="Overrides the global patient_id_system for this source's studies."
    )
    accession_system: str | None = None

    @field_validator("url", "public_url", "oauth_token_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not SOURCE_NAME.fullmatch(value):
            raise ValueError("a source name is 1-64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("partitions", mode="before")
    @classmethod
    def _split_partitions(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment shorthand: "a,b" or "*"
            return [p.strip() for p in value.split(",") if p.strip()] or None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SourceSettings:
        ways = [
            name
            for name, used in (
                ("token", self.token is not None),
                ("username", self.username is not None),
                ("client_secret", self.client_secret is not None),
                ("managed_identity", self.managed_identity),
            )
            if used
        ]
        if len(ways) > 1:
            raise ValueError(f"source {self.name}: choose one way to log in, not {ways}")
        if self.client_secret is not None:
            if not self.client_id:
                raise ValueError(f"source {self.name}: client_secret needs client_id")
            if not (self.oauth_token_url or self.tenant_id):
                raise ValueError(
                    f"source {self.name}: client credentials need tenant_id (Entra ID) "
                    "or oauth_token_url"
                )
        if self.kind == "orthanc" and self.partitions:
            raise ValueError(f"source {self.name}: partitions are a Microsoft DICOM service idea")
        bad = [p for p in self.partitions or [] if p != "*" and not PARTITION_NAME.fullmatch(p)]
        if bad:
            raise ValueError(f"source {self.name}: not partition names: {bad}")
        return self

    @property
    def published_url(self) -> str:
        """The base URL FHIR Endpoints publish: DICOMweb under Orthanc's REST root, the
        service root for the Microsoft DICOM service (version and partition are appended)."""
        if self.public_url:
            return self.public_url
        return f"{self.url}/dicom-web" if self.kind == "orthanc" else self.url

    @property
    def token_url(self) -> str | None:
        return resolve_token_url(self.oauth_token_url, self.tenant_id)

    @property
    def oauth_scope(self) -> str | None:
        if self.scope:
            return self.scope
        return AZURE_DICOM_SCOPE if self.kind == "azure-dicom" else None


class Settings(BaseSettings):
    """Everything the worker can be told. Defaults suit a single Orthanc on one machine."""

    model_config = SettingsConfigDict(
        env_prefix="DICOMCAST_", extra="forbid", validate_default=True, secrets_dir=None
    )

    # --- the DICOM sources: a `sources` list (config file, or JSON in DICOMCAST_SOURCES),
    # or the flat `source_*` shorthand for a single one.
    sources: list[SourceSettings] | None = Field(
        None,
        description="Several DICOM servers, in priority order (the first one's study-"
        "level data wins when they hold the same study).",
    )
    source_name: str = Field("default", description="Stable name of the source (keys state).")
    source_kind: SourceKind = "orthanc"
    source_url: str | None = Field(
        None,
        description="Base URL of the DICOM server: Orthanc's REST root, or the Microsoft DICOM "
        "service's root without the version segment.",
    )
    source_public_url: str | None = Field(
        None,
        description="Base URL published in the FHIR Endpoint (default: URL/dicom-web for "
        "Orthanc, URL for the Microsoft DICOM service).",
    )
    source_api_version: ApiVersion = "v2"
    source_partitions: str | None = Field(
        None, description="Partitions to follow, comma-separated, or * for all."
    )
    source_username: str | None = None
    source_password: SecretStr | None = None
    source_token: SecretStr | None = None
    source_oauth_token_url: str | None = None
    source_tenant_id: str | None = Field(None, description="Microsoft Entra ID tenant.")
    source_client_id: str | None = None
    source_client_secret: SecretStr | None = None
    source_scope: str | None = Field(
        None, description="OAuth2 scope (default for the Microsoft DICOM service: its .default)."
    )
    source_managed_identity: bool = Field(
        False, description="Log in with an Azure managed identity (needs dicomcast[azure])."
    )

    # --- the FHIR server
    fhir_url: str | None = Field(None, description="FHIR R4 base URL.")
    fhir_token: SecretStr | None = Field(None, description="Static bearer token.")
    fhir_oauth_token_url: str | None = Field(
        None, description="OAuth2 client-credentials token URL."
    )
    fhir_client_id: str | None = None
    fhir_client_secret: SecretStr | None = None
    fhir_scope: str | None = Field(
        None, description="OAuth2 scope; for Azure Health Data Services FHIR: <fhir_url>/.default."
    )
    fhir_tenant_id: str | None = Field(
        None, description="Microsoft Entra ID tenant (sets the token URL)."
    )
    fhir_managed_identity: bool = Field(
        False, description="Log in to the FHIR server with an Azure managed identity."
    )
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

    def source_list(self) -> list[SourceSettings]:
        """Every configured source in priority order; `ConfigError` when there is none or
        the settings contradict each other."""
        if self.sources:
            if self.source_url:
                raise ConfigError(
                    "both a `sources` list and DICOMCAST_SOURCE_URL are set: use one of them"
                )
            names = [s.name for s in self.sources]
            if len(set(names)) != len(names):
                raise ConfigError(f"source names must be unique: {names}")
            return list(self.sources)
        if not self.source_url:
            raise ConfigError(
                "DICOMCAST_SOURCE_URL is not set: which DICOM server should I follow?"
            )
        # The flat `source_<field>` settings are the one source's fields.
        flat = {
            name: getattr(self, f"source_{name}")
            for name in SourceSettings.model_fields
            if f"source_{name}" in type(self).model_fields
        }
        try:
            return [SourceSettings(**flat)]
        except ValidationError as exc:
            raise ConfigError(f"invalid source settings: {_problems(exc)}") from None

    @property
    def source(self) -> SourceSettings:
        """The one source of a single-source setup (the first in priority otherwise)."""
        return self.source_list()[0]

    def find_source(self, name: str | None) -> SourceSettings:
        """The source an operator command names; without a name, the only one there is."""
        sources = self.source_list()
        if name is None:
            if len(sources) > 1:
                raise ConfigError(
                    "several sources are configured; say which with --source "
                    f"({', '.join(s.name for s in sources)})"
                )
            return sources[0]
        for source in sources:
            if source.name == name:
                return source
        raise ConfigError(
            f"no source named {name!r} (configured: {', '.join(s.name for s in sources)})"
        )

    @property
    def fhir_token_url(self) -> str | None:
        return resolve_token_url(self.fhir_oauth_token_url, self.fhir_tenant_id)

    def require_worker_settings(self) -> None:
        """Check what `run` needs beyond the mapping-only settings."""
        self.source_list()
        missing = [
            name
            for name, value in (
                ("DICOMCAST_FHIR_URL", self.fhir_url),
                ("DICOMCAST_PATIENT_ID_SYSTEM", self.patient_id_system),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"missing settings: {', '.join(missing)}")
        oauth = [self.fhir_token_url, self.fhir_client_id, self.fhir_client_secret]
        if any(oauth) and not all(oauth) and not self.fhir_managed_identity:
            raise ConfigError(
                "OAuth2 needs DICOMCAST_FHIR_OAUTH_TOKEN_URL (or _FHIR_TENANT_ID), "
                "_FHIR_CLIENT_ID and _FHIR_CLIENT_SECRET together"
            )

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain values, secrets masked, credentials stripped from URLs."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            out[name] = _public(value)
        return out


def _public(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "**********" if value.get_secret_value() else ""
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
        for err in exc.errors()
    )


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
        raise ConfigError(f"invalid settings: {_problems(exc)}") from None
