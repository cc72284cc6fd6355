"""The demo, as a newcomer runs it: it prints the settings it ran with, and those settings
are enough to point dicomcast's own commands at what it left behind."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dicomcast.config.loading import OTHER_VARIABLES

pytestmark = pytest.mark.integration


def test_the_demo_prints_settings_that_reach_what_it_made(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMCAST_")}
    env.update({k: v for k, v in os.environ.items() if k in OTHER_VARIABLES})  # the servers
    shown = subprocess.run(
        [sys.executable, "-m", "dicomcast.sandbox.demo", "--folder", str(tmp_path / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert shown.returncode == 0, shown.stdout[-2000:] + shown.stderr[-2000:]
    exports = [line.strip() for line in shown.stdout.splitlines() if "export DICOMCAST_" in line]
    settings = dict(shlex.split(line)[1].split("=", 1) for line in exports)
    assert {"DICOMCAST_SOURCE_URL", "DICOMCAST_FHIR_URL", "DICOMCAST_STATE_URL"} <= set(settings)
    assert {"DICOMCAST_PATIENT_ID_SYSTEM", "DICOMCAST_ISSUER_SYSTEMS"} <= set(settings)
    status = subprocess.run(
        [sys.executable, "-m", "dicomcast", "status", "--json"],
        env={**env, **settings},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert '"clean": 7' in status.stdout  # the demo's seven studies, found from its settings
