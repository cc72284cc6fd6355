"""A value in the state DB the feed cannot use (a cursor an older version stored, or one
typed into the database by hand) stops that feed visibly: `run --once` exits 1, `/readyz`
is 503, `status` says why, and `cursor set` starts it again. Real Orthanc and sekmet."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dicomcast.config import Settings
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.samples import demo_studies, instances, to_bytes
from dicomcast.sandbox.servers import OrthancServer, free_port
from dicomcast.state.store import StateStore
from dicomcast.worker import Worker
from tests.conftest import dicomcast_cli
from tests.integration.test_operations import wait_for

pytestmark = pytest.mark.integration
Sync = Callable[..., tuple[int, Worker]]


def feed_error(settings: Settings) -> str | None:
    shown = dicomcast_cli(settings, "status", "--json")
    assert shown.returncode == 0, shown.stderr
    [source] = json.loads(shown.stdout)["sources"]
    return None if source["feed_error"] is None else str(source["feed_error"])


def test_a_stored_cursor_the_feed_cannot_use_stops_it_visibly_until_set(
    orthanc: OrthancServer,
    sync_once: Sync,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    orthanc.upload([to_bytes(ds) for ds in instances(demo_studies()[2])])
    settings = make_settings()
    assert sync_once()[0] == 0
    store = StateStore(settings.state_url)
    store.set_cursor("default", "²")  # the state API takes it; `cursor set` would not
    store.close()

    code, worker = sync_once()
    assert code == 1
    assert "not an Orthanc change sequence number" in worker.feed.unusable["default"]
    assert "'²'" in str(feed_error(settings))

    port = free_port()
    env = env_for(make_settings(http_port=port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomcast", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "worker.log").open("wb"),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(
            "readyz to say the feed stopped",
            lambda: (
                httpx.get(f"{base}/readyz", timeout=5).status_code == 503
                and "FeedFailing" in httpx.get(f"{base}/readyz", timeout=5).text
            ),
        )
        assert httpx.get(f"{base}/livez", timeout=5).status_code == 200  # stopped, not hung
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert "the change feed stopped" in (tmp_path / "worker.log").read_text()

    moved = dicomcast_cli(settings, "cursor", "set", "0")
    assert moved.returncode == 0, moved.stderr
    assert feed_error(settings) is None
    code, worker = sync_once()
    assert code == 0 and not worker.feed.unusable
