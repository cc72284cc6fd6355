"""The FHIR server's settings: where it is, how dicomcast logs in, and how it writes.

`Settings` inherits these; they live apart because the FHIR server alone has a dozen ways
in (a token, OAuth2, SMART Backend Services, Azure, AWS SigV4, Google, mutual TLS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from dicomcast.config.source import resolve_token_url
from dicomcast.errors import ConfigError
from dicomcast.urls import http_url_problem

WRITE_BUNDLES = ("transaction", "batch", "single")
WRITE_FEATURES = ("conditional-create", "if-match")


def split_writes(value: str) -> tuple[str, frozenset[str]] | None:
    """`DICOMCAST_FHIR_WRITES` as (bundle kind, features); None for `auto`."""
    words = [w.strip().lower() for w in value.split(",") if w.strip()]
    if words in ([], ["auto"]):
        return None
    kind, *features = words
    if kind not in WRITE_BUNDLES or any(f not in WRITE_FEATURES for f in features):
        raise ValueError(
            f"{value!r}: give 'auto', or one of {', '.join(WRITE_BUNDLES)} followed by any "
            f"of {', '.join(WRITE_FEATURES)} (e.g. 'batch,if-match')"
        )
    return kind, frozenset(features)


def readable_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"{value} is not a readable file")
    return value


class FhirServerSettings(BaseSettings):
    """The FHIR server's part of `Settings` (the environment prefix is set there)."""

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
    fhir_auth: Literal["aws-sigv4", "google"] | None = Field(
        None,
        description="A cloud's own login: `aws-sigv4` (AWS HealthLake; credentials from the "
        "AWS chain, `dicomcast[aws]`) or `google` (Application Default Credentials, "
        "`dicomcast[google]`).",
    )
    fhir_region: str | None = Field(
        None, description="aws-sigv4: the AWS region (default: the AWS chain's, AWS_REGION)."
    )
    fhir_private_key: SecretStr | None = Field(
        None,
        description="SMART Backend Services: the client's private key, PEM (RSA for RS384, "
        "EC P-384 for ES384); with FHIR_CLIENT_ID.",
    )
    fhir_client_cert: Path | None = Field(
        None,
        description="Mutual TLS: the client certificate (PEM) the FHIR server's gateway asks for.",
    )
    fhir_client_key: Path | None = Field(
        None, description="Mutual TLS: its private key (PEM, unencrypted)."
    )
    fhir_key_id: str | None = Field(
        None, description="The `kid` the EHR knows the key by (default: its thumbprint)."
    )
    transaction_max_entries: int = Field(100, ge=1, description="Largest transaction Bundle sent.")
    fhir_writes: str = Field(
        "auto",
        description="How writes go to the FHIR server: `auto` (as its CapabilityStatement "
        "says), or `transaction`, `batch` or `single` followed by the features to use, "
        "e.g. `batch,conditional-create,if-match`.",
    )

    fhir_prefer_minimal: bool = Field(
        True,
        description="Send `Prefer: return=minimal` with transactions (the answers leave "
        "the written resources out); turn off for a server or proxy that mishandles it.",
    )

    @field_validator("fhir_client_cert", "fhir_client_key")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        return readable_file(value)

    @field_validator("fhir_writes")
    @classmethod
    def _known_writes(cls, value: str) -> str:
        split_writes(value)
        return value

    @field_validator("fhir_url", "fhir_oauth_token_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        problem = http_url_problem(value) if value else None
        if problem:
            raise ValueError(problem)
        return value.rstrip("/") if value else value

    def fhir_client_certificate(self) -> tuple[str, str] | None:
        """The mutual-TLS client certificate and key, when both are set."""
        if (self.fhir_client_cert is None) != (self.fhir_client_key is None):
            raise ConfigError("mutual TLS needs DICOMCAST_FHIR_CLIENT_CERT and _FHIR_CLIENT_KEY")
        if self.fhir_client_cert is None or self.fhir_client_key is None:
            return None
        return str(self.fhir_client_cert), str(self.fhir_client_key)

    @property
    def fhir_token_url(self) -> str | None:
        return resolve_token_url(self.fhir_oauth_token_url, self.fhir_tenant_id)

    def check_fhir_login(self) -> None:
        """The FHIR login settings name one way in, completely."""
        if self.fhir_auth is not None:
            others = [self.fhir_token, self.fhir_client_secret, self.fhir_private_key]
            if any(v is not None for v in others) or self.fhir_managed_identity:
                raise ConfigError(
                    f"DICOMCAST_FHIR_AUTH={self.fhir_auth} logs in by itself: "
                    "remove the other FHIR login settings"
                )
            return
        if self.fhir_private_key is not None:
            if not self.fhir_client_id:
                raise ConfigError(
                    "SMART Backend Services needs DICOMCAST_FHIR_CLIENT_ID with _FHIR_PRIVATE_KEY"
                )
            return
        oauth = [self.fhir_token_url, self.fhir_client_id, self.fhir_client_secret]
        if any(oauth) and not all(oauth) and not self.fhir_managed_identity:
            raise ConfigError(
                "OAuth2 needs DICOMCAST_FHIR_OAUTH_TOKEN_URL (or _FHIR_TENANT_ID), "
                "_FHIR_CLIENT_ID and _FHIR_CLIENT_SECRET together"
            )
