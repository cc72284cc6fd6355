"""Throughput through a PACS over DIMSE, both ways, against the real Orthanc (its DICOM port)
and the real FHIR server: query mode (C-FIND polling, `run --once` in-process) and push
mode (dcmtk's `storescu` into `dicomcast run`'s C-STORE listener)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from dicomcast.app import build_app
from dicomcast.config import load_settings
from dicomcast.sandbox.samples import (
    DEMO_ISSUERS,
    DEMO_PATIENT_SYSTEM,
    bulk_studies,
    instances,
    multiframe_file,
    to_bytes,
)
from dicomcast.sandbox.servers import FhirServer, OrthancServer, free_port
from dicomcast.sources.dimse.source import DimseSource
from dicomcast.worker import Worker


@dataclass(frozen=True)
class Through:
    """One mode's run: studies and instances synced, seconds, C-FINDs per study."""

    studies: int
    instances: int
    seconds: float
    finds_per_study: float

    @property
    def rate(self) -> float:
        return self.instances / self.seconds


def query_mode(folder: Path, studies: int, per_study: int) -> Through:
    """`run --once` over DIMSE against an Orthanc holding `studies` studies."""
    specs = bulk_studies(studies, per_study, patients=max(1, studies // 4), prefix="dq")
    with OrthancServer(folder / "orthanc") as orthanc, FhirServer(folder / "fhir") as fhir:
        for spec in specs:
            orthanc.upload([to_bytes(ds) for ds in instances(spec)])
        settings = load_settings(
            None,
            source_kind="dimse",
            source_url=orthanc.dicom_url,
            source_remote_ae="ORTHANC",
            source_lookback_days=3650,
            source_sweep_interval=0,
            fhir_url=fhir.url,
            state_url=f"sqlite:///{folder / 'q.db'}",
            patient_id_system=DEMO_PATIENT_SYSTEM,
            issuer_systems=DEMO_ISSUERS,
            http_port=0,
        )
        logging.getLogger("dicomcast").setLevel(logging.ERROR)  # the table is the output
        worker = Worker(build_app(settings))
        started = time.perf_counter()
        try:
            assert worker.run_once() == 0
        finally:
            worker.close()
            worker.app.close()
        seconds = time.perf_counter() - started
        source = worker.app.source
        finds = source.finds - source.listing_finds if isinstance(source, DimseSource) else 0
    return Through(studies, studies * per_study, seconds, finds / studies)


def push_mode(folder: Path, studies: int, per_study: int) -> Through:
    """`storescu` sends every file to `dicomcast run`; until FHIR holds every study."""
    specs = bulk_studies(studies, per_study, patients=max(1, studies // 4), prefix="dp")
    files = folder / "files"
    files.mkdir(parents=True)
    for spec in specs:
        for n, ds in enumerate(instances(spec)):
            (files / f"{spec.key}-{n}.dcm").write_bytes(to_bytes(ds))
    with FhirServer(folder / "fhir") as fhir, _listening(folder, fhir.url) as (port, _):
        started = time.perf_counter()
        _send(port, files)
        while _total(fhir.url, "ImagingStudy") < studies:
            time.sleep(0.2)
        seconds = time.perf_counter() - started
    return Through(studies, studies * per_study, seconds, 0.0)


@dataclass(frozen=True)
class Large:
    """One large instance pushed: its pixel bytes, seconds to FHIR, the worker's RSS."""

    pixel_bytes: int
    seconds: float
    rss_before: int
    rss_growth: int


def large_push(folder: Path, frames: int) -> Large:
    """One multiframe instance of `frames` 512 KiB frames, storescu to FHIR: what the
    listener's memory does while pixel data streams past it."""
    (spec,) = bulk_studies(1, 1, patients=1, prefix="large-push", series=1)
    files = folder / "files"
    files.mkdir(parents=True)
    size = multiframe_file(files / "large.dcm", spec, frames)
    with FhirServer(folder / "fhir") as fhir, _listening(folder, fhir.url) as (port, pid):
        before = _peak_rss(pid)
        started = time.perf_counter()
        _send(port, files)
        while _total(fhir.url, "ImagingStudy") < 1:
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        return Large(size, seconds, before, _peak_rss(pid) - before)


@contextlib.contextmanager
def _listening(folder: Path, fhir_url: str) -> Iterator[tuple[int, int]]:
    """`dicomcast run` with a C-STORE listener writing to this FHIR server: (port, pid)."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DICOMCAST_")},
        "DICOMCAST_FHIR_URL": fhir_url,
        "DICOMCAST_STATE_URL": f"sqlite:///{folder / 'p.db'}",
        "DICOMCAST_PATIENT_ID_SYSTEM": DEMO_PATIENT_SYSTEM,
        "DICOMCAST_ISSUER_SYSTEMS": json.dumps(DEMO_ISSUERS),
        "DICOMCAST_LOG_LEVEL": "INFO",
        "DICOMCAST_LOG_FORMAT": "text",
        "DICOMCAST_SOURCE_KIND": "dimse",
        "DICOMCAST_SOURCE_STORE_PORT": str(port),
        "DICOMCAST_SOURCE_STABLE_AGE": "1",
        "DICOMCAST_POLL_INTERVAL": "0.5",
        "DICOMCAST_HTTP_PORT": "0",
    }
    log = folder / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "dicomcast", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        while b"C-STORE listener up" not in log.read_bytes():
            if worker.poll() is not None:
                raise RuntimeError(log.read_text())
            time.sleep(0.1)
        yield port, worker.pid
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)


def _send(port: int, files: Path) -> None:
    storescu = shutil.which("storescu")
    if storescu is None:
        raise RuntimeError("dcmtk's storescu is missing (scripts/setup --for-tests)")
    subprocess.run(
        [storescu, "-aec", "DICOMCAST", "127.0.0.1", str(port), str(files), "+sd"],
        check=True,
        capture_output=True,
        env={**os.environ, "TCP_NODELAY": "1"},  # dcmtk's switch for Nagle's algorithm
    )


def _peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process has had, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc")


def _total(base: str, kind: str) -> int:
    answer = httpx.get(f"{base}/{kind}", params={"_summary": "count"}, timeout=10).json()
    return int(answer.get("total", 0))
