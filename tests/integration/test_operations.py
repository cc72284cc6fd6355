"""The long-running worker as operators see it, against the real servers: /metrics moving as
studies flow, /readyz naming the server that is down while /livez stays up, catching up by
itself after each outage, and logs without patient data."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicomcast.config import Settings
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.samples import StudySpec, demo_studies, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer, free_port
from dicomcast.state.store import StateStore
from tests.integration.fhir_state import all_resources, duplicates

pytestmark = pytest.mark.integration


def scrape(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def probe(base: str, path: str) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{base}{path}", timeout=10)
    return response.status_code, response.json()


def upload(orthanc: OrthancServer, specs: list[StudySpec]) -> None:
    for spec in specs:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])


def test_metrics_readiness_and_outages_of_either_server(
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    specs = demo_studies()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(
        http_port=port,
        poll_interval=0.3,
        reconcile_interval=2,
        backoff_base=0.5,
        backoff_max=2,
        http_retry_base=0.05,
        log_format="json",
        log_level="DEBUG",
    )
    upload(orthanc, specs[:2])
    started = time.time()
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicomcast", "run"],
            env=env_for(settings),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:

        def studies() -> int:
            return len(all_resources(fhir, "ImagingStudy"))

        wait_for("the first two studies", lambda: studies() == 2)
        wait_for("ready", lambda: probe(base, "/readyz")[0] == 200)
        m = scrape(base)
        assert value(m, "dicomcast_changes_read_total", source="default") >= 2
        assert value(m, "dicomcast_studies_total", source="default", outcome="synced") == 2
        assert value(m, "dicomcast_sync_lag_seconds_count", source="default") >= 2
        assert value(m, "dicomcast_fhir_requests_total", resource_type="transaction",
                     status_class="2xx") >= 2  # fmt: skip
        timed = "dicomcast_fhir_request_duration_seconds_count"
        assert value(m, timed, resource_type="transaction") >= 2
        assert value(m, timed, resource_type="Endpoint") >= 1  # the Endpoint lookup
        head = value(m, "dicomcast_feed_head", source="default")
        assert head > 0 and value(m, "dicomcast_feed_cursor", source="default") == head
        assert value(m, "dicomcast_studies_dirty", source="default") == 0
        assert value(m, "dicomcast_last_success_timestamp_seconds", source="default") >= started
        assert value(m, "dicomcast_dependency_up", dependency="fhir") == 1
        assert value(m, "dicomcast_source_requests_total", source="default", status_class="2xx")

        # The FHIR server goes away: not ready (and says which), still live, changes queue up.
        fhir.stop()
        wait_for("not ready", lambda: probe(base, "/readyz")[0] == 503)
        _status, body = probe(base, "/readyz")
        assert body["checks"]["fhir"].startswith("unavailable")
        assert body["checks"]["source:default"] == "ok" and body["checks"]["state"] == "ok"
        upload(orthanc, specs[2:4])
        wait_for(
            "queued changes",
            lambda: value(scrape(base), "dicomcast_studies_dirty", source="default") == 2,
        )
        wait_for(  # minutes in real life; the worker must simply wait it out
            "the backlog to age",
            lambda: (
                value(scrape(base), "dicomcast_oldest_dirty_age_seconds", source="default") >= 2
            ),
        )
        m = scrape(base)
        assert value(m, "dicomcast_oldest_dirty_age_seconds", source="default") >= 2
        assert value(m, "dicomcast_dependency_up", dependency="fhir") == 0
        assert probe(base, "/livez")[0] == 200 and proc.poll() is None
        fhir.start()
        wait_for("catching up after the FHIR outage", lambda: studies() == 4)
        wait_for("ready again", lambda: probe(base, "/readyz")[0] == 200)

        # Now the DICOM server goes away.
        orthanc.stop()
        wait_for("not ready", lambda: probe(base, "/readyz")[0] == 503)
        assert probe(base, "/readyz")[1]["checks"]["source:default"].startswith("unavailable")
        time.sleep(2)
        assert probe(base, "/livez")[0] == 200 and proc.poll() is None
        orthanc.start()
        upload(orthanc, specs[4:])
        wait_for("catching up after the DICOM outage", lambda: studies() == len(specs))
        wait_for("ready again", lambda: probe(base, "/readyz")[0] == 200)

        m = scrape(base)
        assert value(m, "dicomcast_studies_total", source="default", outcome="synced") >= 5
        assert value(m, "dicomcast_sync_lag_seconds_count", source="default") >= 5
        # The two studies that waited out the FHIR outage show it in the lag histogram.
        slow = value(m, "dicomcast_sync_lag_seconds_count", source="default") - value(
            m, "dicomcast_sync_lag_seconds_bucket", source="default", le="3.0"
        )
        assert slow >= 2
        assert value(m, "dicomcast_studies_dirty", source="default") == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    assert duplicates(fhir) == {}
    store = StateStore(settings.state_url)
    try:
        assert store.counts("default") == {"clean": len(specs)}
    finally:
        store.close()
    logs = log_path.read_text()
    lines = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    synced = [x for x in lines if x.get("outcome") == "synced"]
    assert len(synced) >= 5 and all(x.get("study_uid") and x.get("source") for x in synced)
    for spec in specs:  # names, IDs and birth dates never reach the log
        for secret in (spec.patient_id, spec.patient_name.split("^")[0], spec.birth_date):
            assert secret not in logs, secret


def test_check_config_says_what_each_server_is_and_how_dicomcast_logs_in(
    make_settings: Callable[..., Settings],
) -> None:
    from dicomcast.state.db import SCHEMA_HEAD

    settings = make_settings()
    checked = subprocess.run(
        [sys.executable, "-m", "dicomcast", "check-config"],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = {line.split()[0]: line for line in checked.stdout.splitlines() if line.strip()}
    assert "ok (Orthanc" in lines["source:default"]
    assert lines["fhir"].endswith(
        "ok (FHIR 4.0.1; login: no login; writes: transaction Bundles of up to 100 entries;"
        " conditional create, If-Match)"
    )
    state = settings.state_url.removeprefix("sqlite:///")
    assert lines["state"].endswith(  # a check creates nothing
        f"ok (none yet at {state}: the worker creates it, schema {SCHEMA_HEAD})"
    )
    assert not Path(state).exists()
    assert "  state_url = " in checked.stdout  # the settings, one a line
    assert lines["settings"] == "settings    ok (secrets masked)"


def browser(url: str, *args: str) -> str:
    """Headless Chromium (Debian's, installed by scripts/setup) on `url`: its output."""
    done = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", *args, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_status_page_shows_a_running_worker_and_no_patient_data(
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    specs = demo_studies()
    upload(orthanc, specs)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomcast", "run"],
        env=env_for(make_settings(http_port=port, poll_interval=0.3)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for("every study", lambda: len(all_resources(fhir, "ImagingStudy")) == len(specs))

        def clean() -> int:
            with httpx.Client() as http:
                data = http.get(f"{base}/status.json").json()
            return int(data["sources"][0]["studies"]["clean"])

        wait_for("the page to count them", lambda: clean() == len(specs))
        with httpx.Client() as http:
            page = http.get(f"{base}/")
            data = http.get(f"{base}/status.json").json()
        seen = browser(f"{base}/", "--dump-dom")
        shot = tmp_path / "status-page.png"
        browser(f"{base}/", f"--screenshot={shot}", "--window-size=1000,1100")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<h2>default</h2>" in page.text and f"{len(specs)} clean, 0 waiting" in page.text
    assert "<svg" in page.text and "nothing paused" in page.text
    assert data["lag_history"]["default"] and data["paused"] == {}
    # What a person sees in a real browser: the page as Chromium rendered it, and a picture.
    assert "<h2>default</h2>" in seen and f"{len(specs)} clean, 0 waiting" in seen
    assert "<svg" in seen and "<polyline" in seen
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    for spec in specs:  # the page and its data name studies by UID, never patients
        for secret in (spec.patient_id, spec.patient_name.split("^")[0]):
            assert secret not in page.text and secret not in json.dumps(data), secret
