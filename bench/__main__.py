"""End-to-end benchmark against the real servers: `python -m bench [--quick]`.

Prints one table. Every ratio compares figures measured in this same run:
- catch-up: `dicomcast run --once` from an empty FHIR server, timed as a separate process
  (CPU and peak RSS from the OS);
- per-event baseline: the anchor's way (DICOM Cast) on the same data into a fresh FHIR server.
  One search plus one read-modify-write transaction per instance, sequentially;
- mapping alone: StudyView -> FHIR resources on a 1,000-instance study, on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from dicomcast.app import MAPPING_CONFIG_KEYS
from dicomcast.fhir.upsert import create_entry
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
from dicomcast.studyview import build_study_views


def catch_up(orthanc: OrthancServer, fhir: FhirServer, folder: Path) -> dict[str, float]:
    env = {
        **os.environ,
        "DICOMCAST_SOURCE_URL": orthanc.url,
        "DICOMCAST_FHIR_URL": fhir.url,
        "DICOMCAST_STATE_URL": f"sqlite:///{folder / 'bench.db'}",
        "DICOMCAST_PATIENT_ID_SYSTEM": DEMO_PATIENT_SYSTEM,
        "DICOMCAST_ISSUER_SYSTEMS": json.dumps(DEMO_ISSUERS),
        "DICOMCAST_LOG_LEVEL": "WARNING",
    }
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "dicomcast", "run", "--once"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"catch-up failed:\n{done.stderr[-3000:]}")
    summary = done.stderr.strip().splitlines()[-1]
    requests = int(summary.split(" FHIR requests")[0].rsplit(" ", 1)[1])
    return {
        "wall": wall,
        "requests": requests,
        "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "rss_mb": after.ru_maxrss / 1024,
    }


def per_event_baseline(
    fhir: FhirServer, all_specs: list[StudySpec], mappings: Mappings, config: dict[str, Any]
) -> dict[str, float]:
    """The anchor's shape: per instance, search the study, add the instance, write it back."""
    requests = 0
    started = time.monotonic()
    with httpx.Client(
        base_url=fhir.url + "/", timeout=60, headers={"Content-Type": "application/fhir+json"}
    ) as http:
        for spec in all_specs:
            datasets = [dataset_to_json(ds)[0] for ds in instances(spec)]
            for count in range(1, len(datasets) + 1):
                (view,), _ = build_study_views(datasets[:count])
                desired = mappings.map_study(view, config, None)
                token = search_token(desired.imaging_study)
                found = http.get(f"ImagingStudy?identifier={token}").json().get("entry", [])
                requests += 1
                if found:
                    current = found[0]["resource"]
                    study = {
                        **desired.imaging_study,
                        "id": current["id"],
                        "subject": current["subject"],
                    }
                    entries = [
                        {
                            "resource": study,
                            "request": {
                                "method": "PUT",
                                "url": f"ImagingStudy/{current['id']}",
                                "ifMatch": f'W/"{current["meta"]["versionId"]}"',
                            },
                        }
                    ]
                else:
                    entries = [
                        create_entry(desired.patient, desired.patient_placeholder),
                        create_entry(desired.imaging_study),
                    ]
                http.post(
                    "", json={"resourceType": "Bundle", "type": "transaction", "entry": entries}
                ).raise_for_status()
                requests += 1
    return {"wall": time.monotonic() - started, "requests": requests}


def mapping_alone(mappings: Mappings, config: dict[str, Any]) -> float:
    spec = StudySpec(
        key="map-1k",
        patient_id="M1",
        patient_name="Map^Bench",
        series=[SeriesSpec("CT", 500, number=1), SeriesSpec("CT", 500, number=2)],
    )
    (view,), _ = build_study_views([dataset_to_json(ds)[0] for ds in instances(spec)])
    mappings.map_study(view, config, "Endpoint/1")
    rounds, started = 5, time.process_time()
    for _ in range(rounds):
        mappings.map_study(view, config, "Endpoint/1")
    return rounds * view.instance_count / (time.process_time() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20 studies x 50 instances")
    args = parser.parse_args()
    studies, per_study = (20, 50) if args.quick else (200, 50)
    all_specs = bulk_studies(studies, per_study, patients=50, prefix="bench")
    total = studies * per_study
    config = {
        "patient_id_system": DEMO_PATIENT_SYSTEM,
        "accession_system": None,
        "issuer_systems": DEMO_ISSUERS,
        "timezone": "UTC",
        "source_name": "bench",
        "source_public_url": "http://bench/dicom-web",
    }
    mappings = Mappings.load(None, MAPPING_CONFIG_KEYS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        orthanc = OrthancServer(folder / "orthanc").start()
        fhir = FhirServer(folder / "fhir").start()
        baseline_fhir = FhirServer(folder / "fhir-baseline").start()
        try:
            started = time.monotonic()
            for spec in all_specs:
                orthanc.upload([to_bytes(ds) for ds in instances(spec)])
            upload = time.monotonic() - started
            run = catch_up(orthanc, fhir, folder)
            base = per_event_baseline(baseline_fhir, all_specs, mappings, config)
        finally:
            orthanc.stop()
            fhir.stop()
            baseline_fhir.stop()
    mapping_rate = mapping_alone(mappings, config)
    rate, base_rate = total / run["wall"], total / base["wall"]
    rows = [
        (
            "data",
            f"{studies} studies x {per_study} instances = {total} instances "
            f"(uploaded to Orthanc in {upload:.1f} s)",
        ),
        (
            "catch-up",
            f"{rate:,.0f} instances/s, {studies / run['wall']:.1f} studies/s, "
            f"{run['wall']:.1f} s wall",
        ),
        ("FHIR requests / instance", f"{run['requests'] / total:.3f} ({run['requests']} requests)"),
        ("worker CPU / 1,000 instances", f"{run['cpu'] / total * 1000:.2f} s"),
        ("worker peak RSS", f"{run['rss_mb']:.0f} MB"),
        (
            "per-event baseline",
            f"{base_rate:,.0f} instances/s, {base['requests'] / total:.2f} requests/instance",
        ),
        ("ratio catch-up / baseline", f"{rate / base_rate:.1f}x"),
        ("mapping alone (1,000-instance study)", f"{mapping_rate:,.0f} instances/s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
