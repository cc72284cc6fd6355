"""The benchmark's measurements. Each takes real servers and returns plain figures."""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.workloads import Workload
from dicomcast.app import MAPPING_CONFIG_KEYS
from dicomcast.fhir.entries import create_entry
from dicomcast.mapping.mapper import Mappings, search_token
from dicomcast.sandbox.samples import (
    DEMO_ISSUERS,
    DEMO_PATIENT_SYSTEM,
    SeriesSpec,
    StudySpec,
    bulk_studies,
    instances,
    to_bytes,
)
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.sources.files import dataset_to_json
from dicomcast.studyview import StudyView, build_study_views

CONCURRENCY = 4  # the worker's default; the limit replay uses the same
CONFIG = {
    "patient_id_system": DEMO_PATIENT_SYSTEM,
    "accession_system": None,
    "issuer_systems": DEMO_ISSUERS,
    "timezone": "UTC",
    "source_name": "default",
    "source_public_url": "http://bench/dicom-web",
}


def mappings() -> Mappings:
    return Mappings.load(None, MAPPING_CONFIG_KEYS)


def worker_env(orthanc: OrthancServer, fhir: FhirServer, state: Path) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("DICOMCAST_")},
        "DICOMCAST_SOURCE_URL": orthanc.url,
        "DICOMCAST_FHIR_URL": fhir.url,
        "DICOMCAST_STATE_URL": f"sqlite:///{state}",
        "DICOMCAST_PATIENT_ID_SYSTEM": DEMO_PATIENT_SYSTEM,
        "DICOMCAST_ISSUER_SYSTEMS": json.dumps(DEMO_ISSUERS),
        "DICOMCAST_CONCURRENCY": str(CONCURRENCY),
        "DICOMCAST_HTTP_PORT": "0",
        "DICOMCAST_LOG_LEVEL": "WARNING",
    }


@dataclass(frozen=True)
class CatchUp:
    instances: int
    studies: int
    sync_seconds: float  # the worker's own time, from its first feed read to the last commit
    process_seconds: float  # including interpreter start-up, imports and migrations
    requests: int
    cpu_seconds: float
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.instances / self.sync_seconds


def catch_up(orthanc: OrthancServer, fhir: FhirServer, state: Path, load: Workload) -> CatchUp:
    """`dicomcast run --once` as its own process; CPU and peak RSS of that process alone."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomcast", "run", "--once"],
        env=worker_env(orthanc, fhir, state),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    peak = PeakRss(proc.pid)
    stderr = proc.stderr.read()
    peak.stop()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise SystemExit(f"catch-up failed ({proc.returncode}):\n{stderr[-3000:]}")
    summary = stderr.strip().splitlines()[-1]  # "... 42 FHIR requests in 1.3 s"
    requests = int(summary.split(" FHIR requests")[0].rsplit(" ", 1)[1])
    seconds = float(summary.rsplit(" in ", 1)[1].split(" s")[0])
    return CatchUp(
        load.instances,
        len(load.studies),
        seconds,
        wall,
        requests,
        usage.ru_utime + usage.ru_stime,
        peak.mb,
    )


class PeakRss:
    """The peak resident set of a running process, from /proc (VmHWM).

    Not `ru_maxrss`: that counts the moment between fork and exec, when the child still
    shares the benchmark's own (large) memory."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mb = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set():
            try:
                with open(f"/proc/{self.pid}/status") as status:
                    for line in status:
                        if line.startswith("VmHWM:"):
                            self.mb = max(self.mb, int(line.split()[1]) / 1024)
            except OSError:
                return
            self._done.wait(0.05)

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def study_view(spec: StudySpec) -> StudyView:
    (view,), _ = build_study_views([dataset_to_json(ds)[0] for ds in instances(spec)])
    return view


def limit_replay(fhir: FhirServer, load: Workload, maps: Mappings) -> float:
    """The ceiling: the worker's final transaction per study, built beforehand and sent
    straight to a fresh FHIR server with the worker's concurrency. Returns seconds."""
    with httpx.Client(base_url=fhir.url + "/", timeout=120) as http:
        endpoint = maps.map_endpoint(CONFIG)
        created = http.post("", json=_bundle([create_entry(endpoint)])).json()
        endpoint_ref = "Endpoint/" + created["entry"][0]["response"]["location"].split("/")[-3]
        bundles = []
        for spec in load.studies:
            mapped = maps.map_study(study_view(spec), CONFIG, endpoint_ref)
            entries = [
                create_entry(mapped.patient, mapped.patient_placeholder),
                create_entry(mapped.imaging_study),
            ]
            bundles.append(json.dumps(_bundle(entries)).encode())
        headers = {"Content-Type": "application/fhir+json"}
        started = time.monotonic()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            for response in pool.map(lambda b: http.post("", content=b, headers=headers), bundles):
                response.raise_for_status()
        return time.monotonic() - started


def _bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def per_event_baseline(fhir: FhirServer, load: Workload, maps: Mappings) -> tuple[float, int]:
    """The anchor's shape (DICOM Cast): per instance, in order, one search for the study and
    one read-modify-write transaction. Resources are prepared beforehand so only the HTTP
    pattern is timed. Returns (seconds, requests)."""
    events: list[tuple[str, dict[str, Any], dict[str, Any], str]] = []
    for spec in load.studies:
        datasets = [dataset_to_json(ds)[0] for ds in instances(spec)]
        for count in range(1, len(datasets) + 1):
            (view,), _ = build_study_views(datasets[:count])
            mapped = maps.map_study(view, CONFIG, None)
            token = search_token(mapped.imaging_study)
            events.append((token, mapped.imaging_study, mapped.patient, mapped.patient_placeholder))
    requests = 0
    started = time.monotonic()
    with httpx.Client(
        base_url=fhir.url + "/", timeout=60, headers={"Content-Type": "application/fhir+json"}
    ) as http:
        for token, study, patient, patient_ref in events:
            found = http.get(f"ImagingStudy?identifier={token}").json().get("entry", [])
            if found:
                current = found[0]["resource"]
                resource = {**study, "id": current["id"], "subject": current["subject"]}
                version = current["meta"]["versionId"]
                entries = [
                    {
                        "resource": resource,
                        "request": {
                            "method": "PUT",
                            "url": f"ImagingStudy/{current['id']}",
                            "ifMatch": f'W/"{version}"',
                        },
                    }
                ]
            else:
                entries = [create_entry(patient, patient_ref), create_entry(study)]
            http.post("", json=_bundle(entries)).raise_for_status()
            requests += 2
    return time.monotonic() - started, requests


@dataclass(frozen=True)
class Lag:
    instances: int
    rate: float
    p50: float
    p95: float
    p99: float
    unseen: int


def steady_state_lag(
    orthanc: OrthancServer, fhir: FhirServer, state: Path, rate: float, seconds: float
) -> Lag:
    """Instances stored at a fixed rate (studies of 10) while the worker runs; per instance,
    the time from its store in Orthanc to its study showing it in an FHIR search."""
    per_study = 10
    specs = bulk_studies(
        int(rate * seconds) // per_study, per_study, patients=25, prefix="steady", modality="MR"
    )
    payloads = [(s.study_uid, [to_bytes(ds) for ds in instances(s)]) for s in specs]
    stored: dict[str, list[float]] = {uid: [] for uid, _ in payloads}
    seen: dict[str, list[float]] = {uid: [] for uid, _ in payloads}
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=fhir.url + "/", timeout=30) as http:
            while not done.is_set():
                since = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)).isoformat()
                query = (
                    f"ImagingStudy?_lastUpdated=ge{since.replace('+00:00', 'Z')}"
                    "&_elements=identifier,numberOfInstances&_count=500"
                )
                now = time.monotonic()
                for entry in http.get(query).json().get("entry", []):
                    resource = entry["resource"]
                    uid = resource["identifier"][0]["value"].removeprefix("urn:oid:")
                    if uid in seen:
                        got = seen[uid]
                        got.extend([now] * (resource.get("numberOfInstances", 0) - len(got)))
                time.sleep(0.25)

    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomcast", "run"],
        env=worker_env(orthanc, fhir, state),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    poller = threading.Thread(target=poll, daemon=True)
    try:
        time.sleep(3)  # start-up is not lag
        poller.start()
        with httpx.Client(base_url=orthanc.url, timeout=60) as http:
            started = time.monotonic()
            n = 0
            for uid, blobs in payloads:
                for blob in blobs:
                    time.sleep(max(0.0, started + n / rate - time.monotonic()))
                    http.post("/instances", content=blob).raise_for_status()
                    stored[uid].append(time.monotonic())
                    n += 1
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and any(len(seen[u]) < len(stored[u]) for u in stored):
            time.sleep(0.5)
    finally:
        done.set()
        proc.terminate()
        proc.wait(60)
    lags = [s - t for u in stored for t, s in zip(stored[u], seen[u], strict=False)]
    unseen = sum(len(stored[u]) - len(seen[u]) for u in stored)
    q = statistics.quantiles(lags, n=100, method="inclusive") if len(lags) > 1 else [0.0] * 99
    return Lag(len(lags) + unseen, rate, q[49], q[94], q[98], unseen)


def mapping_alone(maps: Mappings) -> float:
    """Instances/s for StudyView -> validated FHIR resources, one 1,000-instance study, one
    core (process time)."""
    spec = StudySpec(
        key="map-1k",
        patient_id="M1",
        patient_name="Map^Bench",
        series=[SeriesSpec("CT", 500, number=1), SeriesSpec("CT", 500, number=2)],
    )
    view = study_view(spec)
    maps.map_study(view, CONFIG, "Endpoint/1")
    rounds, started = 5, time.process_time()
    for _ in range(rounds):
        maps.map_study(view, CONFIG, "Endpoint/1")
    return rounds * view.instance_count / (time.process_time() - started)


@dataclass(frozen=True)
class DoseCost:
    """What dose Observations cost a study with no dose report (images must not pay) and
    what one report adds, dose mapping on vs off, measured in one run."""

    read_on: float  # seconds to parse + filter 1,000 images' metadata, dose on
    read_off: float
    kept_on: int  # bytes of what the filter kept of those images
    kept_off: int
    map_on: float  # instances/s mapping the 1,000 images, dose on
    map_off: float
    report_read: float  # seconds to parse + filter one CT dose report's metadata
    report_map: float  # seconds to map one report into its Observation


def _best(fn: Any, rounds: int = 7) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def dose_cost() -> DoseCost:
    """Parse, filter and map a 1,000-image CT study's metadata with dose Observations on
    and off, and one dose report alone."""
    from dicomcast.studyview import dataset_filter

    on = Mappings.load(None, MAPPING_CONFIG_KEYS)
    off = Mappings.load(None, MAPPING_CONFIG_KEYS, per_instance=False)
    images = StudySpec(
        key="dose-bench",
        patient_id="D1",
        patient_name="Dose^Bench",
        series=[SeriesSpec("CT", 1000, number=1)],
    )
    report = StudySpec(
        key="dose-bench",
        patient_id="D1",
        patient_name="Dose^Bench",
        series=[SeriesSpec("SR", 1, number=99, dose="ct")],
    )
    text = json.dumps([dataset_to_json(ds)[0] for ds in instances(images)])
    report_text = json.dumps([dataset_to_json(ds)[0] for ds in instances(report)])
    hook_on = dataset_filter(on.tags_read(), on.content_classes())
    hook_off = dataset_filter(off.tags_read(), off.content_classes())
    read_on = _best(lambda: json.loads(text, object_hook=hook_on))
    read_off = _best(lambda: json.loads(text, object_hook=hook_off))
    kept_on = len(json.dumps(json.loads(text, object_hook=hook_on)))
    kept_off = len(json.dumps(json.loads(text, object_hook=hook_off)))
    (view,), _ = build_study_views(json.loads(text, object_hook=hook_on))
    map_on = view.instance_count / _best(lambda: on.map_study(view, CONFIG, "Endpoint/1"), 5)
    map_off = view.instance_count / _best(lambda: off.map_study(view, CONFIG, "Endpoint/1"), 5)
    report_read = _best(lambda: json.loads(report_text, object_hook=hook_on))
    (one,), _ = build_study_views(json.loads(report_text, object_hook=hook_on))
    with_report = _best(lambda: on.map_study(one, CONFIG, "Endpoint/1"))
    without = _best(lambda: off.map_study(one, CONFIG, "Endpoint/1"))
    return DoseCost(
        read_on, read_off, kept_on, kept_off, map_on, map_off, report_read, with_report - without
    )
