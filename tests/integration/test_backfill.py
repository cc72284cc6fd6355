"""`dicomcast backfill` against the real servers: an archive's history after `cursor set
head`, live studies ahead of it, a date span over DIMSE, and a listing that resumes."""

from __future__ import annotations

import datetime as dt
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dicomcast.config import Settings
from dicomcast.model import DateSpan
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.samples import bulk_studies, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.sources.dimse.source import DimseSource
from dicomcast.state.store import StateStore
from tests.conftest import run_once_cli
from tests.integration.fhir_state import all_resources, duplicates, first_identifier
from tests.integration.orthanc_state import settle
from tests.integration.test_dimse import ct_study, dimse

pytestmark = pytest.mark.integration


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomcast", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def uids(fhir: FhirServer) -> set[str]:
    return {first_identifier(s).split(":")[-1] for s in all_resources(fhir, "ImagingStudy")}


def test_a_backfill_syncs_the_history_that_cursor_set_head_skipped(
    orthanc: OrthancServer, fhir: FhirServer, make_settings: Callable[..., Settings]
) -> None:
    history = bulk_studies(12, 2, patients=4, prefix="hist")
    for spec in history:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    settle(orthanc)  # else StableStudy events of the history land after the head
    env = env_for(make_settings())
    assert cli(env, "cursor", "set", "head").returncode == 0
    assert run_once_cli(env, timeout=120).returncode == 0
    assert uids(fhir) == set()  # history skipped, as asked

    listed = cli(env, "backfill", "--no-wait", "--page-size", "5")
    assert listed.returncode == 0, listed.stderr
    assert "12 studies listed, 12 to sync" in listed.stdout
    assert (
        "no worker is running for default: the backfill waits for one; start `dicomcast "
        "run`" in " ".join(listed.stderr.split())
    )
    assert "the workers sync them" not in listed.stdout  # there are none
    status = json.loads(cli(env, "status", "--json").stdout)["sources"][0]
    assert status["backfill"]["to_sync"] == 12 and status["lag_seconds"] == 0.0
    assert run_once_cli(env, timeout=120).returncode == 0
    assert uids(fhir) == {spec.study_uid for spec in history}

    again = cli(env, "backfill", "--page-size", "5")  # synced before: nothing to do
    assert again.returncode == 0, again.stderr
    assert "12 studies listed, 0 to sync (12 synced before)" in again.stdout
    assert duplicates(fhir) == {}


def test_live_studies_go_ahead_of_a_running_backfill(
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    history = bulk_studies(30, 1, patients=5, prefix="old", series=1)
    for spec in history:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    settle(orthanc)  # history stays history: no Stable events of it after the head
    settings = make_settings(poll_interval=0.3)
    env = env_for(settings)
    assert cli(env, "cursor", "set", "head").returncode == 0
    assert cli(env, "backfill", "--no-wait", "--max-rate", "2").returncode == 0
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "dicomcast", "run"], env=env, stdout=log, stderr=log
    )
    store = StateStore(settings.state_url)
    try:
        deadline = time.monotonic() + 30
        while not any(run.done for run in store.backfills("default")):  # under way
            assert time.monotonic() < deadline, "the backfill never started"
            time.sleep(0.1)
        live = bulk_studies(1, 1, patients=1, prefix="live", series=1)[0]
        orthanc.upload([to_bytes(ds) for ds in instances(live)])
        deadline = time.monotonic() + 30
        while live.study_uid not in uids(fhir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert live.study_uid in uids(fhir)
        (run,) = store.backfills("default")
        assert run.waiting > 10  # the backfill, paced at 2 studies/s, is far from done
        assert run.rate < 4
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
        log.close()
        store.close()


def test_a_dimse_backfill_lists_a_date_span_a_month_a_query(
    orthanc: OrthancServer, fhir: FhirServer, make_settings: Callable[..., Settings]
) -> None:
    dates = ["20190305", "20190420", "20190611", "20210101"]
    for n, date in enumerate(dates):
        orthanc.upload([to_bytes(ds) for ds in instances(ct_study(f"bf{n}", date, 1))])
    settings = make_settings(**dimse(orthanc, lookback_days=7))
    source = DimseSource(settings.first_source())
    try:
        span = DateSpan(dt.date(2019, 3, 1), dt.date(2019, 6, 30))
        pages, after = [], None
        while True:
            page = source.archive(span, after, 1000)
            pages.append(page.keys)
            after = page.after
            if after is None:
                break
    finally:
        source.close()
    assert len(pages) == 5  # 122 days, 30 a query, newest first
    found = [key.split("/")[0] for keys in pages for key in keys]
    assert found == ["20190611", "20190420", "20190305"]

    env = env_for(settings)
    listed = cli(env, "backfill", "--no-wait", "--since", "2019-03-01", "--until", "2019-06-30")
    assert listed.returncode == 0, listed.stderr
    assert run_once_cli(env, timeout=120).returncode == 0
    assert len(uids(fhir)) == 3  # the 2021 study lies outside both the span and the lookback


def test_a_cancelled_backfill_leaves_the_history_seen_and_syncs_nothing_more(
    orthanc: OrthancServer, fhir: FhirServer, make_settings: Callable[..., Settings]
) -> None:
    history = bulk_studies(6, 1, patients=2, prefix="cancel")
    for spec in history:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    settle(orthanc)
    env = env_for(make_settings())
    assert cli(env, "cursor", "set", "head").returncode == 0
    assert cli(env, "backfill", "--no-wait").returncode == 0
    cancelled = cli(env, "backfill", "--cancel")
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == (
        "backfill of default cancelled: 6 studies not synced yet are left as seen (each is "
        "synced once it changes)"
    )
    status = json.loads(cli(env, "status", "--json").stdout)["sources"][0]
    assert status["backfill"] is None and status["seen_not_synced"] == 6
    assert run_once_cli(env, timeout=120).returncode == 0
    assert uids(fhir) == set()  # cancelled: nothing of the history synced
