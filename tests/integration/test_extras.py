"""Each optional extra, installed alone into a fresh venv from the built wheel, starts what
it is for: `pip install 'dicomcast[google]'` once could not start the Google login (a
dependency of google-auth's transport was missing) and said to install what was installed.
A login that then fails for want of credentials is the expected end here."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

# What each extra starts, and what it says once it has started (no credentials here).
STARTS = {
    "google": (
        "from dicomcast.auth.cloud import google_default\ngoogle_default()",
        "Google Application Default Credentials",
    ),
    "aws": (
        "from dicomcast.auth.cloud import AwsSigV4\n"
        "import httpx\n"
        "auth = AwsSigV4('eu-west-1')\n"
        "signed = next(auth.auth_flow(httpx.Request('GET', 'https://x.example/r4/Patient')))\n"
        "raise SystemExit('signed: ' + signed.headers['Authorization'][:16])",
        "signed: AWS4-HMAC-SHA256",
    ),
    "azure": (
        "from dicomcast.auth import managed_identity\n"
        "managed_identity('https://x.example/.default')\n"
        "raise SystemExit('credential built')",
        "credential built",
    ),
    "postgres": (
        "from dicomcast.state.db import make_engine\n"
        "make_engine('postgresql://u:p@127.0.0.1:9/x')\n"
        "raise SystemExit('engine built')",
        "engine built",
    ),
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(ROOT)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (found,) = out.glob("dicomcast-*.whl")
    return found


def test_each_extra_alone_starts_its_login(wheel: Path, tmp_path: Path) -> None:
    """The four venvs are built at once (pip waits on the disk more than the CPU)."""
    with ThreadPoolExecutor(max_workers=len(STARTS)) as pool:
        said = dict(
            zip(STARTS, pool.map(lambda e: _started(e, wheel, tmp_path / e), STARTS), strict=True)
        )
    for extra, text in said.items():
        assert "cannot be imported" not in text and "ModuleNotFoundError" not in text, (
            extra,
            text[-2000:],
        )
        assert STARTS[extra][1] in text, (extra, text[-2000:])


def _started(extra: str, wheel: Path, folder: Path) -> str:
    """What starting the extra's login said, in a fresh venv holding only it."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "--no-compile",
         f"{wheel}[{extra}]"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if installed.returncode != 0:
        return "pip failed: " + installed.stderr[-2000:]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(folder),
        "NO_GCE_CHECK": "True",  # google-auth: do not look for a GCE metadata server
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    started = subprocess.run(
        [str(venv / "bin" / "python"), "-c", STARTS[extra][0]],
        capture_output=True, text=True, check=False, env=env, cwd=folder, timeout=120,
    )  # fmt: skip
    return started.stdout + started.stderr
