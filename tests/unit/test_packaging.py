"""The built wheel ships dicomcast and its bundled mappings, and nothing else: no top-level
`tests` or `bench` package lands in a user's site-packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_only_dicomcast_and_its_mappings(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("dicomcast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"dicomcast", wheel.name.split("-py")[0] + ".dist-info"}
    assert "dicomcast/default_mappings/imagingstudy.yaml" in names
    assert "dicomcast/default_mappings/tables/modalities.csv" in names
    assert "dicomcast/mapping/standard/dcm.csv" in names  # PS3.16 codes, read at start-up
    assert "dicomcast/state/migrations/versions/0001_initial.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "dicomcast/tests"))]
