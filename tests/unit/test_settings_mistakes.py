"""The mistakes a newcomer makes in settings, each answered in one line that names the
setting and the fix (exit 2, never a traceback), or, for a variable that is no setting,
warned at start with the setting it resembles."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomcast.app import build_app
from dicomcast.cli import app
from dicomcast.config import load_settings
from dicomcast.errors import ConfigError
from dicomcast.http import RetryPolicy
from dicomcast.state.db import SCHEMA_HEAD
from dicomcast.state.store import StateStore
from dicomcast.sync.leases import refuse_a_twin
from tests.loopback import Answer, Loopback

runner = CliRunner()
BASE = {
    "DICOMCAST_SOURCE_URL": "http://orthanc.test:8042",
    "DICOMCAST_FHIR_URL": "http://f.test/fhir",
}


def refused(**variables: str) -> str:
    """What `check-config` says to these settings, which it must refuse: its one line."""
    result = runner.invoke(app, ["check-config"], env={**BASE, **variables})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("DICOMCAST_PATIENT_ID_SYSTEM", "MRN", "must be an absolute URI such as urn:oid:1.2.3.4"),
        ("DICOMCAST_PATIENT_ID_SYSTEM", "1.2.3.4", "an OID, not a URI: write urn:oid:1.2.3.4"),
        ("DICOMCAST_ACCESSION_SYSTEM", "ACC", "must be an absolute URI"),
        ("DICOMCAST_SOURCE_PATIENT_ID_SYSTEM", "2.16.840.1", "write urn:oid:2.16.840.1"),
        ("DICOMCAST_ISSUER_SYSTEMS", '{"HOSP-A": "MRN"}', "need an absolute URI as system"),
        ("DICOMCAST_ISSUER_SYSTEMS", "{bad json", "DICOMCAST_ISSUER_SYSTEMS is not valid JSON"),
        ("DICOMCAST_LOG_LEVEL", "verbose", "'verbose' is not a log level: one of DEBUG, INFO"),
        ("DICOMCAST_FHIR_URL", "fhir.example.org/fhir", "not an absolute http(s) URL"),
        ("DICOMCAST_SOURCE_URL", "orthanc:8042", "url 'orthanc:8042' is not an absolute http(s)"),
        ("DICOMCAST_SOURCE_URL", "http://orthanc:8042/dicom-web", "url is Orthanc's REST root"),
    ],
)
def test_a_setting_given_wrong_is_refused_in_one_line_naming_it(
    variable: str, value: str, said: str
) -> None:
    line = refused(**{variable: value})
    assert line.startswith("dicomcast: invalid settings: ") and said in line
    assert "Value error" not in line


def warnings_of(**variables: str) -> list[str]:
    """The stray-variable warnings `check-config` logs with these variables set."""
    env = {**BASE, "DICOMCAST_LOG_FORMAT": "json", **variables}
    result = runner.invoke(app, ["check-config"], env=env)
    return [
        json.loads(line)["msg"]
        for line in result.stderr.splitlines()
        if line.startswith("{") and "is not a dicomcast setting" in line
    ]


def test_a_variable_that_is_no_setting_is_warned_with_the_one_it_resembles() -> None:
    typos = {"DICOMCAST_SOURCE_URLL": "http://x.test", "DICOMCAST_POLL_INTERVALL": "3"}
    assert warnings_of(**typos, DICOMCAST_ZZZ="1") == [
        "DICOMCAST_POLL_INTERVALL is not a dicomcast setting and is ignored: "
        "did you mean DICOMCAST_POLL_INTERVAL?",
        "DICOMCAST_SOURCE_URLL is not a dicomcast setting and is ignored: "
        "did you mean DICOMCAST_SOURCE_URL?",
        "DICOMCAST_ZZZ is not a dicomcast setting and is ignored",
    ]


def test_every_setting_and_the_variables_around_them_pass_without_a_warning(
    tmp_path: Path,
) -> None:
    assert (
        warnings_of(
            DICOMCAST_POLL_INTERVAL="3",
            DICOMCAST_SOURCE_LOOKBACK_DAYS="3",
            DICOMCAST_SECRETS_DIR=str(tmp_path),
            DICOMCAST_LOG_FORMAT="json",
        )
        == []
    )


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["status", "--json"],
        ["failures", "list"],
        ["failures", "list", "--feed"],
        ["cursor", "show"],
        ["deletions", "list"],
    ],
)
def test_a_command_that_only_reads_never_creates_a_state_db(
    tmp_path: Path, command: list[str]
) -> None:
    """`status` from another folder used to create an empty state DB there and report
    '0 failed, lag 0.0 s' as if all were well."""
    state = tmp_path / "state.db"
    result = runner.invoke(app, command, env={**BASE, "DICOMCAST_STATE_URL": f"sqlite:///{state}"})
    assert result.exit_code == 2 and not state.exists()
    assert result.stderr.strip() == (
        f"dicomcast: no dicomcast state database at {state}: nothing has run with these "
        "settings here. Set DICOMCAST_STATE_URL to the worker's (or run from its folder)"
    )


def test_a_state_db_that_cannot_be_created_is_named_with_its_path(tmp_path: Path) -> None:
    state = tmp_path / "missing-folder" / "state.db"
    env = {**BASE, "DICOMCAST_STATE_URL": f"sqlite:///{state}", "DICOMCAST_HTTP_PORT": "0"}
    env["DICOMCAST_PATIENT_ID_SYSTEM"] = "urn:oid:1.2.3"
    result = runner.invoke(app, ["run", "--once"], env=env)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"dicomcast: cannot create the state database {state}: {state.parent} is not a "
        "folder this process may write in. Set DICOMCAST_STATE_URL, e.g. "
        "sqlite:////var/lib/dicomcast/state.db"
    )


def test_check_config_shows_the_settings_one_a_line_masked_and_creates_nothing(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.db"
    env = {
        **BASE,
        "DICOMCAST_SOURCE_URL": "http://admin:s3cret@orthanc.test:8042",
        "DICOMCAST_FHIR_CLIENT_SECRET": "hunter2",
        "DICOMCAST_FHIR_CLIENT_ID": "dicomcast",
        "DICOMCAST_FHIR_OAUTH_TOKEN_URL": "https://login.test/token",
        "DICOMCAST_PATIENT_ID_SYSTEM": "urn:oid:1.2.3",
        "DICOMCAST_STATE_URL": f"sqlite:///{state}",
    }
    result = runner.invoke(app, ["check-config"], env=env)
    lines = result.stdout.splitlines()
    assert lines[0] == "settings    ok (secrets masked)"
    assert '  source.url = "http://admin:***@orthanc.test:8042"' in lines
    assert '  fhir_client_secret = "**********"' in lines
    assert "s3cret" not in result.output and "hunter2" not in result.output
    assert not state.exists()  # a check creates nothing: the worker does
    (said,) = [line for line in lines if line.startswith("state")]
    assert said.endswith(f"ok (none yet at {state}: the worker creates it, schema {SCHEMA_HEAD})")


def test_studies_cursor_set_head_recorded_are_shown_as_seen_not_as_synced(tmp_path: Path) -> None:
    """After `cursor set head`, `status` said "600 clean" although none was in FHIR."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore(url)
    store.migrate()
    store.ensure_source("default", "orthanc")
    store.baseline("default", {f"study-{n}": 3 for n in range(600)})
    store.close()
    env = {**BASE, "DICOMCAST_STATE_URL": url}
    result = runner.invoke(app, ["status"], env=env)
    assert result.exit_code == 0, result.output
    assert (
        "studies         0 clean, 0 dirty, 0 failed, 600 seen, not synced (history skipped "
        "by `cursor set head`: each is synced once it changes, or by `dicomcast backfill`)"
    ) in result.stdout.splitlines()
    report = json.loads(runner.invoke(app, ["status", "--json"], env=env).stdout)
    (source,) = report["sources"]
    assert source["studies"]["clean"] == 0 and source["seen_not_synced"] == 600


class NotFound(Loopback):
    """A web server that is neither Orthanc nor a FHIR base: 404 for everything."""

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        return 404, {"Content-Type": "text/html"}, b"<h1>Not Found</h1>"


def test_urls_that_point_at_the_wrong_thing_are_answered_with_the_url_and_a_hint(
    tmp_path: Path,
) -> None:
    with NotFound() as web:
        env = {
            "DICOMCAST_SOURCE_URL": web.url,
            "DICOMCAST_FHIR_URL": web.url,
            "DICOMCAST_PATIENT_ID_SYSTEM": "urn:oid:1.2.3",
            "DICOMCAST_STATE_URL": f"sqlite:///{tmp_path / 'state.db'}",
            "DICOMCAST_HTTP_PORT": "0",
            "DICOMCAST_HTTP_RETRIES": "1",
        }
        checked = runner.invoke(app, ["check-config"], env=env)
        lines = {line.split()[0]: line for line in checked.stdout.splitlines() if line.strip()}
        assert lines["source:default"].endswith(
            f"FAILED: Orthanc GET system: HTTP 404: is DICOMCAST_SOURCE_URL ({web.url}) "
            "Orthanc's REST root, such as http://host:8042?"
        )
        assert lines["fhir"].endswith(
            f"FAILED: FHIR capability statement: HTTP 404: is DICOMCAST_FHIR_URL ({web.url}) "
            "the FHIR base, often ending in /fhir?"
        )
        ran = runner.invoke(app, ["run", "--once"], env=env)
    assert ran.exit_code == 2  # a wrong URL is a setting to fix, not an outage to wait out
    assert (
        ran.stderr.strip()
        .splitlines()[-1]
        .endswith(f"is DICOMCAST_FHIR_URL ({web.url}) the FHIR base, often ending in /fhir?")
    )


@pytest.mark.parametrize("zone", [None, "Europe/Berlin", "UTC"])
def test_a_timezone_left_unset_is_warned_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, zone: str | None
) -> None:
    """Left at UTC on a site in CET, every time was an hour or two off, unsaid."""
    settings = load_settings(
        None,
        source_url="http://orthanc.test",
        fhir_url="http://fhir.test/fhir",
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        patient_id_system="urn:oid:1.2.3",
        http_port=0,
        timezone=zone,
    )
    with caplog.at_level(logging.WARNING, logger="dicomcast.app"):
        build_app(settings).close()
    warned = [r.getMessage() for r in caplog.records if "DICOMCAST_TIMEZONE" in r.getMessage()]
    assert warned == (
        [
            "DICOMCAST_TIMEZONE is not set: DICOM times without an offset "
            "(TimezoneOffsetFromUTC) are read as UTC. Set it to the zone the modalities' "
            "clocks run in (e.g. Europe/Berlin), or every such time is off by that much"
        ]
        if zone is None
        else []  # set, even to UTC: the operator's choice
    )


def test_a_second_live_worker_under_the_same_name_is_refused_and_a_restart_is_not() -> None:
    """Two workers with the default WORKER_ID (the host name) on one machine both believed
    they held the feed, silently."""
    store = StateStore("sqlite://")
    store.migrate()
    here = socket.gethostname()
    me = f"{here}:{os.getpid()}"
    store.heartbeat("vm", within=0, now=100.0, instance=f"{here}:{os.getppid()}")  # alive
    with pytest.raises(ConfigError) as refused:
        refuse_a_twin(store, "vm", me, lease=30, now=101.0)
    assert str(refused.value) == (
        f"another worker runs as DICOMCAST_WORKER_ID=vm on this state database "
        f"({here}:{os.getppid()}, heard 1 s ago): give each worker its own DICOMCAST_WORKER_ID"
    )
    store.heartbeat("vm", within=0, now=100.0, instance="other-host:1")  # another machine
    with pytest.raises(ConfigError):
        refuse_a_twin(store, "vm", me, lease=30, now=101.0)
    store.leave("vm", "other-host:1")  # it exited cleanly: the name is free at once
    refuse_a_twin(store, "vm", me, lease=30, now=101.0)
    store.heartbeat("vm", within=0, now=100.0, instance="other-host:1")
    refuse_a_twin(store, "vm", me, lease=30, now=200.0)  # not heard for a lease: gone
    store.heartbeat("vm", within=0, now=100.0, instance=f"{here}:999999999")  # died: a restart
    refuse_a_twin(store, "vm", me, lease=30, now=101.0)
    store.heartbeat("vm", within=0, now=100.0, instance=me)  # this very process
    refuse_a_twin(store, "vm", me, lease=30, now=101.0)
    refuse_a_twin(store, "another-name", me, lease=30, now=101.0)
    store.close()


def test_status_watch_refreshes_until_ctrl_c(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore(url)
    store.migrate()
    store.ensure_source("default", "orthanc")
    store.close()
    env = {**os.environ, **BASE, "DICOMCAST_STATE_URL": url}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomcast", "status", "--watch", "0.2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    deadline, seen, studies = time.monotonic() + 30, 0, 0
    while seen < 3:  # three refreshes printed: then Ctrl-C
        assert time.monotonic() < deadline and proc.poll() is None
        line = proc.stdout.readline()
        seen += line.startswith("dicomcast status, every 0.2 s (Ctrl-C to stop)")
        studies += line.startswith("studies         0 clean, 0 dirty, 0 failed")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=10)
    assert proc.returncode == 0 and studies >= 2


def test_a_server_that_is_not_there_is_named_by_its_address() -> None:
    """A FHIR URL with nothing behind it said only 'ConnectError'."""
    from dicomcast.errors import FhirUnavailable
    from dicomcast.fhir.client import FhirClient
    from dicomcast.sandbox.servers import free_port

    port = free_port()  # nothing listens there
    client = FhirClient(f"http://127.0.0.1:{port}/fhir", retry=RetryPolicy(attempts=1))
    with pytest.raises(FhirUnavailable) as caught:
        client.metadata()
    client.close()
    assert str(caught.value) == (
        f"FHIR capability statement: ConnectError: nothing answers at http://127.0.0.1:{port}"
    )
