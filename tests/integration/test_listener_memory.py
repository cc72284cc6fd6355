"""The C-STORE listener's memory while a gigabyte of pixel data is pushed to the real
worker by dcmtk's storescu: the pixels pass through, the header is kept, the worker's
peak RSS stays where a small study leaves it."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from dicomcast.config import Settings
from dicomcast.sandbox.samples import SeriesSpec, StudySpec, multiframe_file
from dicomcast.sandbox.servers import FhirServer, free_port
from tests.integration.test_dimse import push_settings, start_worker, storescu, wait_for

pytestmark = pytest.mark.integration
FRAMES = 2048  # of 512 KiB: 1 GiB


def big_instance(folder: Path) -> Path:
    """A multiframe CT of 1 GiB of pixel data."""
    spec = StudySpec(
        key="big",
        patient_id="BIG1",
        patient_name="Large^Study",
        issuer="HOSP-A",
        series=[SeriesSpec("CT", 1)],
    )
    path = folder / "big.dcm"
    multiframe_file(path, spec, FRAMES)
    return path


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_gigabyte_pushed_leaves_peak_memory_flat(
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    port = free_port()
    folder = tmp_path / "big"
    folder.mkdir()
    path = big_instance(folder)
    assert path.stat().st_size > 2**30
    worker = start_worker(push_settings(make_settings, port), tmp_path / "worker.log")
    try:
        before = peak_rss(worker.pid)
        sent = storescu(port, folder)
        assert sent.returncode == 0, sent.stderr.decode(errors="replace")[-2000:]
        [study] = wait_for(fhir, "ImagingStudy", 1)
        assert study["numberOfInstances"] == 1
        grown = peak_rss(worker.pid) - before
        print(f"peak RSS before {before / 2**20:.0f} MiB, grown by {grown / 2**20:.0f} MiB")
        assert grown < 96 * 2**20  # the pixels (1 GiB) were never held
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
