"""The Microsoft DICOM service source against the fake service: feed v1 windows and gaps,
v2 time windows split inside one instant, partitions, Entra ID tokens, throttling, faults."""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.util
import itertools
import time
from dataclasses import replace
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from dicomcast.auth import AzureCredential
from dicomcast.config import SourceSettings, load_settings
from dicomcast.errors import ConfigError, MappingError, SourceUnavailable, StoredValueError
from dicomcast.http import RetryPolicy
from dicomcast.model import DateSpan
from dicomcast.sandbox.samples import bulk_studies
from dicomcast.sources.azure import AzureDicomSource
from dicomcast.sources.azure_positions import instant, parse_v2_cursor
from tests.azure_fake import CLIENT_ID, CLIENT_SECRET, SERVICE, TENANT, FakeDicomService
from tests.fakes import dicom_json

FAST = RetryPolicy(attempts=4, max_delay=10, base=0.01)


def settings(**overrides: Any) -> SourceSettings:
    values: dict[str, Any] = {
        "name": "azure",
        "kind": "azure-dicom",
        "url": SERVICE,
        "tenant_id": TENANT,
        "client_id": CLIENT_ID,
        "client_secret": SecretStr(CLIENT_SECRET),
    }
    values.update(overrides)
    return SourceSettings(**values)


OPEN = SourceSettings(name="azure", kind="azure-dicom", url=SERVICE)  # no login


def source_for(service: FakeDicomService, **overrides: Any) -> AzureDicomSource:
    return AzureDicomSource(settings(**overrides), transport=service.transport(), retry=FAST)


def read_all(source: AzureDicomSource, cursor: str | None, limit: int) -> tuple[list[str], str]:
    """Every study key the feed names from `cursor` on, with the cursor it ends at."""
    keys: list[str] = []
    for _ in range(10_000):  # a bound: never loop forever on a window
        page = source.read_changes(cursor, limit)
        keys += [m.study_key for m in page.marks]
        cursor = page.cursor
        if page.done:
            return keys, cursor or ""
    raise AssertionError("the feed never ended")


def history(service: FakeDicomService, studies: int, partition: str = "Microsoft.Default") -> int:
    for spec in bulk_studies(studies, 3, patients=2, prefix=f"az{partition[:2]}"):
        service.store(dicom_json(spec), partition)
    return len(service.entries)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_every_entry_is_read_once_across_gaps_and_shared_instants(version: str) -> None:
    service = FakeDicomService()
    history(service, 40)  # 120 entries; sequences jump by 3 and by 150 in places
    sequences = [e.sequence for e in service.entries]
    assert sequences[-1] > len(sequences) + 150  # the fake really has gaps
    source = source_for(service, api_version=version)
    keys, cursor = read_all(source, None, 7)  # small pages split shared instants
    expected = [f"Microsoft.Default/{e.study}" for e in service.entries]
    assert keys == expected  # each entry once, in feed order
    # Nothing new: one more read ends at once with no marks and the same cursor.
    again = source.read_changes(cursor, 7)
    assert (again.marks, again.done, again.cursor) == ([], True, cursor)
    # Entries arriving later (some at the very instant we stopped at) are read, once.
    history(service, 3)
    more, _ = read_all(source, cursor, 7)
    assert more == [f"Microsoft.Default/{e.study}" for e in service.entries[120:]]


def test_v1_walks_an_empty_window_instead_of_stopping_at_the_gap() -> None:
    service = FakeDicomService()
    history(service, 8)
    sequences = [e.sequence for e in service.entries]
    before = next(a for a, b in itertools.pairwise(sequences) if b - a > 100)
    source = source_for(service, api_version="v1")
    page = source.read_changes(str(before), 100)  # the window after it is empty
    assert page.marks == [] and not page.done
    assert int(page.cursor) == before + 100 and page.head == str(service.latest_sequence)


def test_v1_feed_going_backwards_is_a_reset() -> None:
    service = FakeDicomService()
    history(service, 2)
    page = source_for(service, api_version="v1").read_changes("5000", 100)
    assert page.reset and page.cursor == "0"


def test_v2_cursor_is_an_instant_and_a_count_and_rejects_v1_positions() -> None:
    assert parse_v2_cursor("2026-11-01T00:00:00.0010000Z#2") == ("2026-11-01T00:00:00.0010000Z", 2)
    assert parse_v2_cursor("2026-11-01T00:00:00Z") == ("2026-11-01T00:00:00Z", 0)
    with pytest.raises(StoredValueError, match="not a change feed v2 position"):
        parse_v2_cursor("1234")
    # Seven decimals are kept: instants 100 ns apart stay apart.
    assert instant("2026-11-01T00:00:00.0000001Z") != instant("2026-11-01T00:00:00.0000002Z")
    assert instant("2026-11-01T01:00:00+01:00") == instant("2026-11-01T00:00:00Z")


def test_partitions_keep_studies_apart_and_the_allow_list_filters() -> None:
    service = FakeDicomService(partitioned=True)
    spec = bulk_studies(1, 2, patients=1, prefix="same")[0]
    for partition in ("alpha", "beta", "gamma"):
        service.store(dicom_json(spec), partition)
    source = source_for(service, partitions=["alpha", "beta"])
    keys, _ = read_all(source, None, 50)
    assert sorted(set(keys)) == [f"alpha/{spec.study_uid}", f"beta/{spec.study_uid}"]
    fetched = source.fetch_study(f"beta/{spec.study_uid}")
    assert fetched.view is not None and fetched.view.instance_count == 2
    assert service.requests[-1].url.path.startswith("/v2/partitions/beta/studies/")
    where = source.location(f"beta/{spec.study_uid}")
    assert where.address == f"{SERVICE}/v2/partitions/beta"
    assert where.scope == f"{SERVICE}/partitions/beta"  # no version: identity survives v1->v2
    assert source.location(f"Microsoft.Default/{spec.study_uid}").scope is None
    assert source.lookup_study(spec.study_uid) == [
        f"alpha/{spec.study_uid}",
        f"beta/{spec.study_uid}",
    ]
    with pytest.raises(MappingError, match="not a study key"):
        source.fetch_study("../../etc/passwd")


def test_a_deleted_study_reads_as_gone() -> None:
    service = FakeDicomService()
    spec = bulk_studies(1, 2, patients=1, prefix="gone")[0]
    service.store(dicom_json(spec))
    service.delete(spec.study_uid)
    fetched = source_for(service).fetch_study(f"Microsoft.Default/{spec.study_uid}")
    assert fetched.view is None and fetched.study_uid == spec.study_uid
    assert [e.state for e in service.entries] == ["deleted"] * 4


def test_an_expired_token_is_renewed_once_and_the_request_goes_through() -> None:
    service = FakeDicomService()
    history(service, 2)
    source = source_for(service)
    source.read_changes(None, 10)
    assert service.token_requests == 1
    source.read_changes(None, 10)
    assert service.token_requests == 1  # cached
    service.expire_tokens()
    page = source.read_changes(None, 10)
    assert service.token_requests == 2 and len(page.marks) == 6


def test_a_wrong_secret_is_an_outage_that_names_the_reason() -> None:
    service = FakeDicomService()
    source = source_for(service, client_secret=SecretStr("wrong"))
    with pytest.raises(SourceUnavailable) as caught:
        source.read_changes(None, 10)
    assert caught.value.outage and "invalid_client" in str(caught.value)
    assert "wrong" not in str(caught.value)


def test_throttling_waits_for_retry_after_and_5xx_is_retried() -> None:
    service = FakeDicomService()
    history(service, 2)
    waits: list[float] = []  # the policy's clock: what it waited, not the wall's
    source = AzureDicomSource(
        settings(), transport=service.transport(), retry=replace(FAST, sleep=waits.append)
    )
    source.read_changes(None, 10)  # token fetched
    service.fail_next(429, retry_after=0.3)
    service.fail_next(500)
    service.fail_next(503)
    page = source.read_changes(None, 10)
    assert len(page.marks) == 6 and len(waits) == 3 and waits[0] >= 0.3
    service.fail_next(503, times=10)
    with pytest.raises(SourceUnavailable) as caught:
        source.read_changes(None, 10)
    assert caught.value.outage and caught.value.status == 503


def test_malformed_entries_are_skipped_and_a_non_array_page_is_an_error() -> None:
    service = FakeDicomService(require_auth=False)
    history(service, 1)
    source = AzureDicomSource(OPEN, transport=service.transport(), retry=FAST)
    service.entries[0].study = "../x"
    page = source.read_changes(None, 10)
    assert len(page.marks) == 2 and page.changes_read == 3

    def not_a_list(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"oops": True})

    broken = AzureDicomSource(
        OPEN,
        transport=httpx.MockTransport(not_a_list),
        retry=RetryPolicy(attempts=1),
    )
    with pytest.raises(SourceUnavailable, match="not a JSON array"):
        broken.read_changes(None, 10)


def test_environment_shorthand_builds_an_azure_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOMCAST_SOURCE_KIND", "azure-dicom")
    monkeypatch.setenv("DICOMCAST_SOURCE_URL", SERVICE + "/")
    monkeypatch.setenv("DICOMCAST_SOURCE_TENANT_ID", TENANT)
    monkeypatch.setenv("DICOMCAST_SOURCE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("DICOMCAST_SOURCE_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("DICOMCAST_SOURCE_PARTITIONS", "alpha, beta")
    loaded = load_settings()
    source = loaded.first_source()
    assert (source.kind, source.api_version, source.url) == ("azure-dicom", "v2", SERVICE)
    assert source.partitions == ["alpha", "beta"]
    assert source.token_url == f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
    assert source.oauth_scope == "https://dicom.healthcareapis.azure.com/.default"
    assert CLIENT_SECRET not in str(loaded.public_dict())
    monkeypatch.setenv("DICOMCAST_SOURCE_API_VERSION", "v3")
    with pytest.raises(ConfigError, match="source_api_version"):
        load_settings()
    monkeypatch.setenv("DICOMCAST_SOURCE_API_VERSION", "v1")
    monkeypatch.setenv("DICOMCAST_SOURCE_TOKEN", "static")
    with pytest.raises(ConfigError, match="one way to log in"):
        load_settings().source_list()


def test_a_versioned_url_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="without the version segment"):
        AzureDicomSource(settings(url=SERVICE + "/v2"))


def test_several_sources_need_unique_names_and_no_shorthand() -> None:
    one = {"name": "a", "url": "http://a.test"}
    with pytest.raises(ConfigError, match="unique"):
        load_settings(sources=[one, one]).source_list()
    with pytest.raises(ConfigError, match="use one of them"):
        load_settings(sources=[one], source_url="http://b.test").source_list()
    both = load_settings(sources=[one, {**one, "name": "b", "kind": "azure-dicom"}])
    assert [s.name for s in both.source_list()] == ["a", "b"]
    with pytest.raises(ConfigError, match="--source"):
        both.find_source(None)


class FakeCredential:
    """azure-identity's credential interface: get_token(scope) -> .token, .expires_on."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def get_token(self, scope: str) -> Any:
        self.calls.append(scope)

        class Token:
            token = f"mi-{len(self.calls)}"
            expires_on = int(time.time()) + 3600

        return Token()


def test_managed_identity_tokens_come_from_the_credential_and_renew_on_401() -> None:
    service = FakeDicomService(require_auth=False)
    history(service, 1)
    credential = FakeCredential()
    auth = AzureCredential(credential, "https://dicom.healthcareapis.azure.com/.default")
    source = AzureDicomSource(
        settings(client_id=None, client_secret=None, tenant_id=None, managed_identity=True),
        transport=service.transport(),
        retry=FAST,
        auth=auth,
    )
    source.read_changes(None, 10)
    source.read_changes(None, 10)
    assert credential.calls == ["https://dicom.healthcareapis.azure.com/.default"]
    assert service.requests[-1].headers["Authorization"] == "Bearer mi-1"


def test_an_azure_fhir_service_gets_the_same_entra_id_login() -> None:
    from dicomcast.auth import ClientCredentials, fhir_auth

    fhir_url = "https://ws-fhir.fhir.azurehealthcareapis.com"
    loaded = load_settings(
        fhir_url=fhir_url,
        fhir_tenant_id=TENANT,
        fhir_client_id=CLIENT_ID,
        fhir_client_secret=CLIENT_SECRET,
    )
    auth = fhir_auth(loaded)
    assert isinstance(auth, ClientCredentials)
    assert auth.token_url == f"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"
    assert auth.scope == f"{fhir_url}/.default"
    if importlib.util.find_spec("azure") is None:  # the optional extra is not installed
        with pytest.raises(ConfigError, match="azure-identity"):
            fhir_auth(load_settings(fhir_url=fhir_url, fhir_managed_identity=True))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_head_is_where_only_changes_still_to_come_are_read(version: str) -> None:
    service = FakeDicomService()
    older = bulk_studies(4, 1, patients=1, prefix=f"head{version}")
    for spec in older:
        service.store(dicom_json(spec))
    source = source_for(service, api_version=version)
    head = source.head()
    newer = bulk_studies(1, 1, patients=1, prefix=f"next{version}")[0]
    service.store(dicom_json(newer))
    keys, _ = read_all(source, head, 50)
    uids = [k.rsplit("/", 1)[-1] for k in keys]
    assert newer.study_uid in uids
    # History is skipped; v2 reads the entries of the head's own instant again (the fake
    # puts three entries in each instant), at least once rather than never.
    assert older[0].study_uid not in uids and older[1].study_uid not in uids
    assert len(uids) == (1 if version == "v1" else 3)


def test_a_backfill_lists_each_partition_by_study_date_in_pages() -> None:
    service = FakeDicomService(partitioned=True)
    specs = [
        dataclasses.replace(spec, study_date=f"2020010{n + 1}")
        for n, spec in enumerate(bulk_studies(5, 1, patients=1, prefix="bfaz", series=1))
    ]
    for n, spec in enumerate(specs):
        service.store(dicom_json(spec), "alpha" if n % 2 else "beta")
    source = source_for(service, partitions=["*"])
    span = DateSpan(dt.date(2020, 1, 2), dt.date(2020, 1, 5))
    keys, after, pages = [], None, 0
    while True:
        page = source.archive(span, after, 1)
        keys += page.keys
        pages += 1
        after = page.after
        if after is None:
            break
    wanted = {f"{'alpha' if n % 2 else 'beta'}/{s.study_uid}" for n, s in enumerate(specs)}
    assert sorted(keys) == sorted(wanted - {f"beta/{specs[0].study_uid}"})  # Jan 1 is out
    assert pages >= 4
    query = service.requests[-1].url.params
    assert query["StudyDate"] == "20200102-20200105" and query["limit"] == "1"
