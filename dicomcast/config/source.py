"""One DICOM server to follow, as settings: the same definition serves the `sources` list
and the flat `DICOMCAST_SOURCE_*` shorthand for a single source."""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator

from dicomcast.urls import has_userinfo, http_url_problem, system_problem, without_userinfo

# Pub/Sub's own rules for the names: a project ID, and a subscription name.
SUBSCRIPTION = re.compile(
    r"projects/[a-z][-a-z0-9]{4,28}[a-z0-9]/subscriptions/[A-Za-z][-A-Za-z0-9._~+%]{2,254}"
)
SourceKind = Literal["orthanc", "azure-dicom", "dimse", "aws-healthimaging", "dicomweb"]
ApiVersion = Literal["v1", "v2"]
ENTRA_LOGIN = "https://login.microsoftonline.com"
AZURE_DICOM_SCOPE = "https://dicom.healthcareapis.azure.com/.default"
DEFAULT_PARTITION = "Microsoft.Default"
SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PARTITION_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # the service's own rule
# An AE title (PS3.5 AE): up to 16 characters of the default repertoire, no backslash or
# control characters, not only spaces.
AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")
DATASTORE_ID = re.compile(r"[0-9a-z]{32}")  # the service's own pattern
DICOM_URL = re.compile(r"dicom://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(?P<port>[0-9]{1,5})")


def ae_title(value: str) -> str:
    """A valid AE title, trimmed; ValueError when it is not one."""
    trimmed = value.strip()
    if not trimmed or not AE_TITLE.fullmatch(trimmed):
        raise ValueError(f"{value!r} is not an AE title (1-16 printable characters, no '\\')")
    return trimmed


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
    url: str = Field(
        "",
        description="Base URL of the DICOM server: Orthanc's REST root, or the Microsoft DICOM "
        "service's root without the version segment.",
    )
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
    auth: Literal["google"] | None = Field(
        None,
        description="A cloud's own login for the source: `google` (Application Default "
        "Credentials for the Cloud Healthcare API, `dicomcast[google]`), for a Google DICOM "
        "store followed with kind `dicomweb`.",
    )
    patient_id_system: str | None = Field(
        None, description="Overrides the global patient_id_system for this source's studies."
    )
    accession_system: str | None = None

    # --- DIMSE (kind `dimse`): a PACS queried with C-FIND, and/or a C-STORE listener
    remote_ae: str | None = Field(None, description="The PACS's AE title (query mode).")
    local_ae: str = Field("DICOMCAST", description="dicomcast's own AE title.")
    query: bool | None = Field(
        None, description="Poll the PACS with C-FIND (default: when `url` is set)."
    )
    lookback_days: int = Field(
        7,
        ge=0,
        le=3650,
        description="The polled window (dimse, dicomweb): studies of the last N days.",
    )
    sweep_interval: float = Field(
        86400.0,
        ge=0,
        description="Seconds between full sweeps of older study dates, read a page per poll "
        "(0 = never).",
    )
    store_port: int | None = Field(
        None, ge=1, le=65535, description="Port of the C-STORE listener (unset: none)."
    )
    store_host: str = Field("127.0.0.1", description="Address the C-STORE listener binds.")
    allowed_aes: list[str] | None = Field(
        None, description="Calling AE titles the listener accepts (unset or empty: any)."
    )
    stable_age: float = Field(
        30.0, ge=0, description="Seconds without a new instance before a pushed study is read."
    )
    tls_ca_bundle: str | None = Field(
        None, description="TLS (DICOM TLS, or HTTPS to this source): CA certificates (PEM)."
    )
    tls_cert: str | None = Field(
        None, description="TLS: our certificate (PEM), for DICOM TLS or a mutual-TLS gateway."
    )
    tls_key: str | None = Field(None, description="TLS: our private key (PEM).")
    timeout: float = Field(30.0, gt=0, description="Seconds a DIMSE association may wait.")
    find_deadline: float = Field(
        300.0, gt=0, description="Seconds one C-FIND may take in all, however it trickles."
    )
    max_matches: int = Field(
        50_000,
        ge=100,
        le=10_000_000,
        description="Matches one C-FIND may return; a listing past it is split by date.",
    )

    # --- a DICOMweb archive's change notifications (kind `dicomweb`)
    pubsub_subscription: str | None = Field(
        None,
        description="A Google Cloud Healthcare DICOM store's Pub/Sub pull subscription "
        "(projects/P/subscriptions/S): its notifications mark studies dirty within a poll; "
        "the listing then runs every reconcile_interval, for what they never say.",
    )
    pubsub_url: str = Field(
        "https://pubsub.googleapis.com",
        description="The Pub/Sub API's root (another only for its emulator).",
    )

    # --- AWS HealthImaging (kind `aws-healthimaging`): `url` is an optional endpoint override
    datastore_id: str | None = Field(None, description="The HealthImaging data store's id.")
    region: str | None = Field(None, description="AWS region (default: AWS_REGION).")
    search_rate: float = Field(
        25.0, gt=0, description="SearchImageSets calls a second at most (AWS's default quota)."
    )
    metadata_rate: float = Field(
        50.0, gt=0, description="GetImageSetMetadata calls a second at most (AWS's quota)."
    )

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

    @field_validator("allowed_aes", mode="before")
    @classmethod
    def _split_aes(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment: "MODALITY1,PACS" or a JSON list
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
            value = [v for v in value if str(v).strip()]
        return [ae_title(str(v)) for v in value] if value else None

    @field_validator("remote_ae", "local_ae")
    @classmethod
    def _ae(cls, value: str | None) -> str | None:
        return ae_title(value) if value is not None else None

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
                ("auth", self.auth is not None),
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
        self._check_urls()
        if self.public_url and has_userinfo(self.public_url):
            raise ValueError(
                f"source {self.name}: public_url is published in FHIR Endpoints for every "
                "client to read; it must not carry a user name or password"
            )
        if self.kind == "dimse":
            self._check_dimse()
        if self.kind == "aws-healthimaging":
            self._check_healthimaging()
        if self.pubsub_subscription is not None:
            self._check_pubsub()
        if self.kind == "orthanc" and self.partitions:
            raise ValueError(f"source {self.name}: partitions are a Microsoft DICOM service idea")
        bad = [p for p in self.partitions or [] if p != "*" and not PARTITION_NAME.fullmatch(p)]
        if bad:
            raise ValueError(f"source {self.name}: not partition names: {bad}")
        return self

    def _check_healthimaging(self) -> None:
        if not self.datastore_id or not DATASTORE_ID.fullmatch(self.datastore_id):
            raise ValueError(f"source {self.name}: aws-healthimaging needs datastore_id")
        self.region = (
            self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        )
        if not self.region:
            raise ValueError(f"source {self.name}: aws-healthimaging needs region (or AWS_REGION)")

    def _check_urls(self) -> None:
        """Every URL an absolute http(s) one (a DIMSE source's is dicom://), and an
        Orthanc source's its REST root, not its DICOMweb root."""
        urls = {"public_url": self.public_url, "oauth_token_url": self.oauth_token_url}
        if self.kind != "dimse":
            urls["url"] = self.url or None
        for name, value in urls.items():
            problem = http_url_problem(value) if value else None
            if problem:
                raise ValueError(f"source {self.name}: {name} {problem}")
        if self.kind == "orthanc" and self.url.endswith("/dicom-web"):
            raise ValueError(
                f"source {self.name}: url is Orthanc's REST root, without /dicom-web "
                f"({self.url.removesuffix('/dicom-web')}); the DICOMweb path is added to it"
            )
        for name, system in (
            ("patient_id_system", self.patient_id_system),
            ("accession_system", self.accession_system),
        ):
            problem = system_problem(system) if system is not None else None
            if problem:
                raise ValueError(f"source {self.name}: {name} {problem}")

    def _check_pubsub(self) -> None:
        if self.kind != "dicomweb":
            raise ValueError(f"source {self.name}: pubsub_subscription is for kind dicomweb")
        if not SUBSCRIPTION.fullmatch(self.pubsub_subscription or ""):
            raise ValueError(
                f"source {self.name}: pubsub_subscription must be "
                "projects/PROJECT/subscriptions/SUBSCRIPTION"
            )
        if has_userinfo(self.pubsub_url):
            raise ValueError(f"source {self.name}: pubsub_url must not carry credentials")

    def _check_dimse(self) -> None:
        if self.url and not DICOM_URL.fullmatch(self.url):
            raise ValueError(f"source {self.name}: url must be dicom://HOST:PORT for kind dimse")
        if self.querying and not self.remote_ae:
            raise ValueError(f"source {self.name}: querying a PACS needs remote_ae")
        if self.query and not self.url:
            raise ValueError(f"source {self.name}: query=true needs url (dicom://HOST:PORT)")
        if not self.querying and self.store_port is None:
            raise ValueError(
                f"source {self.name}: a dimse source needs url (query) or store_port (push)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(f"source {self.name}: tls_cert and tls_key go together")

    @property
    def configured(self) -> bool:
        """Something to follow: a url, or (DIMSE push only) a C-STORE listener port."""
        return (
            bool(self.url)
            or (self.kind == "dimse" and self.store_port is not None)
            or (self.kind == "aws-healthimaging" and bool(self.datastore_id))
        )

    @property
    def querying(self) -> bool:
        """A DIMSE source polls its PACS with C-FIND (query mode)."""
        return bool(self.url) if self.query is None else self.query

    @property
    def dicom_address(self) -> tuple[str, int]:
        """(host, port) of a `dicom://HOST:PORT` url."""
        match = DICOM_URL.fullmatch(self.url)
        if not match:
            raise ValueError(f"source {self.name}: not a dicom://HOST:PORT url")
        return match.group("host").strip("[]"), int(match.group("port"))

    @property
    def published_url(self) -> str:
        """The base URL FHIR Endpoints publish: DICOMweb under Orthanc's REST root, the
        service root for the Microsoft DICOM service (version and partition are appended).
        Never with the credentials a `url` may carry: every FHIR client could read them."""
        if self.public_url:
            return self.public_url
        if self.kind == "dimse":
            return ""  # DIMSE has no Endpoint connection type in FHIR: no Endpoint
        if self.kind == "aws-healthimaging":  # its DICOMweb API
            host = f"https://dicom-medical-imaging.{self.region}.amazonaws.com"
            return f"{host}/datastore/{self.datastore_id}"
        url = without_userinfo(self.url)
        return f"{url}/dicom-web" if self.kind == "orthanc" else url

    @property
    def token_url(self) -> str | None:
        return resolve_token_url(self.oauth_token_url, self.tenant_id)

    @property
    def oauth_scope(self) -> str | None:
        if self.scope:
            return self.scope
        return AZURE_DICOM_SCOPE if self.kind == "azure-dicom" else None
