"""Settings: everything the worker can be told, as values. Nothing here builds a client.

Precedence, highest first: command-line flags, `DICOMCAST_*` environment variables, the
config file (`--config` or `DICOMCAST_CONFIG`), files in `DICOMCAST_SECRETS_DIR` (one file
per setting, as Docker/Kubernetes secrets mount them), defaults. Secrets are `SecretStr`
and print as `**********` everywhere.
"""

from __future__ import annotations

import os
import re
import socket
import zoneinfo
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from dicomcast.config.fhir import FhirServerSettings, readable_file
from dicomcast.config.loading import (
    config_file_values,
    precedence,
    public_value,
    read_config_file,
)
from dicomcast.config.source import SourceSettings
from dicomcast.errors import ConfigError
from dicomcast.model import (
    BasedOnPolicy,
    DeletedStudyPolicy,
    PatientPolicy,
    UnknownIssuerPolicy,
)
from dicomcast.urls import is_absolute_uri, system_problem

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Settings(FhirServerSettings):
    """Everything the worker can be told. Defaults suit a single Orthanc on one machine."""

    model_config = SettingsConfigDict(
        env_prefix="DICOMCAST_", extra="forbid", validate_default=True, secrets_dir=None
    )

    # --- the DICOM sources: a `sources` list (config file, or JSON in DICOMCAST_SOURCES),
    # or the flat `source_*` shorthand for a single one (see `dicomcast.config.loading`).
    sources: list[SourceSettings] | None = Field(
        None,
        description="Several DICOM servers, in priority order (the first one's study-"
        "level data wins when they hold the same study).",
    )
    source: SourceSettings | None = Field(
        None,
        description="The one source of a single-source setup: `DICOMCAST_SOURCE_<FIELD>` in "
        "the environment, `source_<field>` keys or a [source] table in the config file.",
    )

    # --- HTTP
    verify_tls: bool = Field(
        True, description="Verify TLS certificates (turning it off is logged as a warning)."
    )
    ca_bundle: Path | None = Field(None, description="CA certificates (PEM) to verify with.")
    http_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds each request may take for its whole answer (a trickling answer "
        "is cut off); also the connect and read timeouts.",
    )
    max_study_bytes: int = Field(
        256 * 2**20,
        ge=2**16,
        description="Largest answer read from a source (a study's metadata): a larger study "
        "is refused with the reason, not read into memory.",
    )
    http_retries: int = Field(
        4, ge=1, le=10, description="Tries per request for transient errors (1 = no retry)."
    )
    http_retry_base: float = Field(
        0.5, gt=0, description="First in-process retry delay in seconds; doubles, with jitter."
    )

    # --- state
    state_url: str = Field("sqlite:///dicomcast.db", description="SQLAlchemy URL of the state DB.")
    state_pool_size: int = Field(
        5,
        ge=1,
        le=100,
        description="PostgreSQL connections kept per worker (as many more on load).",
    )
    state_statement_timeout: float = Field(
        30.0,
        ge=0,
        description="Seconds a state DB statement may run before PostgreSQL cancels it (an "
        "outage, never a hang; 0 = no limit). SQLite waits this long for a locked file.",
    )

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
    unknown_issuer: UnknownIssuerPolicy = Field(
        "park",
        description="A patient ID whose IssuerOfPatientID is not in issuer_systems: park "
        "the study (default), use patient_id_system (`default-system`: patient 123 of two "
        "hospitals becomes one Patient), or `derive` issuer_system_base + the issuer's name.",
    )
    issuer_system_base: str | None = Field(
        None, description="With unknown_issuer=derive: the system of issuer X is this + X."
    )
    timezone: str = Field("UTC", description="IANA zone of DICOM times that carry no offset.")
    based_on: BasedOnPolicy = Field(
        "resolve",
        description="ImagingStudy.basedOn for the accession's order: a literal reference to "
        "the ServiceRequest when the server has it (`resolve`), always the logical one by "
        "identifier (`identifier`), or none (`off`); an order system's own are kept.",
    )
    dose_observations: bool = Field(
        True,
        description="Write a Radiation Dose Summary Observation per dose report "
        "(mappings/dose-summary.yaml); off, dose reports are listed in the ImagingStudy only.",
    )
    patient_policy: PatientPolicy = "fill-missing"
    deleted_study_policy: DeletedStudyPolicy = Field(
        "delete",
        description="A study gone from its source: delete its ImagingStudy and dose "
        "Observations, or mark them `entered-in-error`; also for a dose report gone alone.",
    )
    delete_budget: int | None = Field(
        50,
        ge=0,
        description="Studies a source may delete from FHIR per hour without an operator's "
        "approval (`unlimited` turns the guard off); past it deletions are held, nothing is "
        "deleted, and `dicomcast deletions` decides.",
    )

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
    feed_lease: float = Field(
        30.0,
        ge=1,
        description="Seconds a worker's hold on a source's change feed lasts unrenewed (it "
        "renews every third): how soon another worker takes over a dead one's feed.",
    )
    claim_lease: float = Field(
        300.0,
        ge=1,
        description="Seconds a worker's claim on a study lasts: how soon another worker "
        "takes over a study whose worker died mid-sync (a restart takes its own back at once).",
    )
    max_attempts: int = Field(10, ge=1, description="Transient failures before a study is parked.")
    backoff_base: float = Field(5.0, gt=0)
    backoff_max: float = Field(600.0, gt=0)
    shutdown_timeout: float = Field(
        30.0, gt=0, description="Longest wait for in-flight studies after SIGTERM/SIGINT."
    )
    verify_interval: float = Field(
        0.0,
        ge=0,
        description="Seconds between the worker's own `dicomcast verify` of each source it "
        "tails (0 = off), exported as dicomcast_drift_studies; it reads every study, so "
        "for a large archive an hour or a day.",
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
        # Highest first: command-line flags (init), environment, config file, secrets dir.
        return precedence(settings_cls, init_settings, env_settings, file_secret_settings)

    @field_validator("delete_budget", mode="before")
    @classmethod
    def _unlimited(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("unlimited", "none", "off"):
            return None
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("patient_id_system", "accession_system", "issuer_system_base")
    @classmethod
    def _system_uri(cls, value: str | None) -> str | None:
        problem = system_problem(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"{value!r} is not a log level: one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("issuer_systems")
    @classmethod
    def _issuer_uris(cls, value: dict[str, str]) -> dict[str, str]:
        bad = sorted(k for k, v in value.items() if not is_absolute_uri(v))
        if bad:
            raise ValueError(
                f"issuers {bad} need an absolute URI as system (urn:oid:..., https://...)"
            )
        return value

    @model_validator(mode="after")
    def _derive_needs_base(self) -> Settings:
        if self.unknown_issuer == "derive" and not is_absolute_uri(self.issuer_system_base or ""):
            raise ValueError("unknown_issuer=derive needs issuer_system_base, an absolute URI")
        return self

    @field_validator("ca_bundle")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        return readable_file(value)

    # --- derived views

    def source_list(self) -> list[SourceSettings]:
        """Every configured source in priority order; `ConfigError` when there is none or
        the settings contradict each other."""
        if self.sources:
            if self.source is not None and self.source.configured:
                raise ConfigError(
                    "both a `sources` list and DICOMCAST_SOURCE_URL are set: use one of them"
                )
            names = [s.name for s in self.sources]
            if len(set(names)) != len(names):
                raise ConfigError(f"source names must be unique: {names}")
            unnamed = [s.name for s in self.sources if not s.configured]
            if unnamed:
                raise ConfigError(f"sources without a url: {unnamed}")
            return list(self.sources)
        if self.source is None or not self.source.configured:
            raise ConfigError(
                "DICOMCAST_SOURCE_URL is not set: which DICOM server should I follow?"
            )
        return [self.source]

    def first_source(self) -> SourceSettings:
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
        self.check_fhir_login()

    def public_dict(self) -> dict[str, Any]:
        """Settings as plain values, secrets masked, credentials stripped from URLs."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            out[name] = public_value(value)
        return out


def _problems(exc: ValidationError) -> str:
    """Each problem named as the user wrote it: `source.url` of the flat shorthand is
    `source_url` (DICOMCAST_SOURCE_URL)."""

    def where(loc: tuple[int | str, ...]) -> str:
        if len(loc) > 1 and loc[0] == "source" and isinstance(loc[1], str):
            loc = (f"source_{loc[1]}", *loc[2:])
        return ".".join(str(p) for p in loc) or "settings"

    return "; ".join(
        f"{where(err['loc'])}: {err['msg'].removeprefix('Value error, ')}" for err in exc.errors()
    )


def load_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    """Build settings from flags, environment, file and secrets (in that order of
    precedence); raise `ConfigError` with a readable reason."""
    path = config_file or (Path(p) if (p := os.environ.get("DICOMCAST_CONFIG")) else None)
    file_values = read_config_file(path) if path else {}
    flags = {k: v for k, v in flags.items() if v is not None}
    secrets_dir = os.environ.get("DICOMCAST_SECRETS_DIR")
    try:
        with config_file_values(file_values):
            if secrets_dir:
                return Settings(_secrets_dir=secrets_dir, **flags)
            return Settings(**flags)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {_problems(exc)}") from None
    except SettingsError as exc:  # a list or table setting whose value is not JSON
        field = re.search(r'field "([^"]+)"', str(exc))
        name = f"DICOMCAST_{field.group(1).upper()}" if field else "a setting"
        raise ConfigError(
            f"invalid settings: {name} is not valid JSON (a list or table setting takes "
            'JSON, such as {"HOSP-A": "urn:oid:1.2.3"} or ["a", "b"])'
        ) from None
