"""The demo: real Orthanc + real FHIR server, sample studies in, `dicomcast run --once`, and a
look at what landed, including the cohort query researchers run. Data lives in .demo/."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dicomcast.sandbox.samples import (
    DEMO_ISSUERS,
    DEMO_PATIENT_SYSTEM,
    demo_studies,
    instances,
    to_bytes,
)
from dicomcast.sandbox.servers import REPO, FhirServer, OrthancServer

COHORT = "ImagingStudy?modality=CT&patient.birthdate=le1970-01-01"
DOSES = "Observation?code=http://loinc.org|73569-6"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--folder", type=Path, default=REPO / ".demo", help="working folder (emptied first)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave both servers running until Ctrl-C"
    )
    args = parser.parse_args()
    shutil.rmtree(args.folder, ignore_errors=True)
    args.folder.mkdir(parents=True)

    print("starting Orthanc and the FHIR server on 127.0.0.1 ...")
    # Each server stops whatever happens next, even when the other fails to start.
    with (
        OrthancServer(args.folder / "orthanc") as orthanc,
        FhirServer(args.folder / "fhir") as fhir,
    ):
        return _show(args, orthanc, fhir)


def _show(args: argparse.Namespace, orthanc: OrthancServer, fhir: FhirServer) -> int:
    """Load the sample studies, sync them, and show what landed."""
    specs = demo_studies()
    total = 0
    for spec in specs:
        total += len(orthanc.upload([to_bytes(ds) for ds in instances(spec)]))
    print(f"Orthanc {orthanc.url}: stored {len(specs)} studies, {total} instances")
    print(f"FHIR    {fhir.url}")

    env = {
        **os.environ,
        "DICOMCAST_SOURCE_URL": orthanc.url,
        "DICOMCAST_FHIR_URL": fhir.url,
        "DICOMCAST_STATE_URL": f"sqlite:///{args.folder / 'dicomcast.db'}",
        "DICOMCAST_PATIENT_ID_SYSTEM": DEMO_PATIENT_SYSTEM,
        "DICOMCAST_ISSUER_SYSTEMS": json.dumps(DEMO_ISSUERS),
        "DICOMCAST_TIMEZONE": "Europe/Berlin",
        "DICOMCAST_LOG_FORMAT": "text",
        "DICOMCAST_LOG_LEVEL": "WARNING",
    }
    dicomcast = [sys.executable, "-m", "dicomcast"]
    print("\nthe settings it runs with (to try commands against these servers yourself,")
    print("start the demo with --keep and paste these into another shell):")
    for name, value in env.items():
        if name.startswith("DICOMCAST_") and name not in os.environ:
            print(f"  export {name}={shlex.quote(value)}")
    print("\n$ dicomcast run --once")
    started = time.monotonic()
    code = subprocess.run([*dicomcast, "run", "--once"], env=env, check=False).returncode
    print(f"(exit {code}, {time.monotonic() - started:.1f} s)")

    with fhir.client() as http:
        patients = http.get("Patient", params={"_count": 100}).json().get("entry", [])
        studies = http.get("ImagingStudy", params={"_count": 100}).json().get("entry", [])
        print(f"\nFHIR now holds {len(patients)} Patients and {len(studies)} ImagingStudies:")
        names = {}
        for entry in patients:
            patient = entry["resource"]
            first = patient.get("name", [{}])[0]
            names[f"Patient/{patient['id']}"] = (
                f"{' '.join(first.get('given', []))} {first.get('family', '')}".strip()
            )
        for entry in studies:
            study = entry["resource"]
            modalities = ",".join(c["code"] for c in study.get("modality", []))
            print(
                f"  {study.get('started', '?'):<30} {modalities:<4} "
                f"{study.get('numberOfSeries', 0)} series/{study.get('numberOfInstances', 0)}"
                f" inst  {study.get('description', ''):<22} "
                f"{names.get(study['subject']['reference'], '?')}"
            )
        doses = http.get(DOSES, params={"_count": 100}).json().get("entry", [])
        described = {
            f"ImagingStudy/{e['resource']['id']}": e["resource"].get("description", "")
            for e in studies
        }
        print(f"\nDose reports: GET {DOSES}")
        for entry in doses:
            observation = entry["resource"]
            study_ref = (observation.get("partOf") or [{}])[0].get("reference", "")
            print(
                f"  {observation.get('effectiveDateTime', '?'):<30} "
                f"{described.get(study_ref, '?'):<22} {observation.get('valueString', '')}"
            )
        print(f"  {len(doses)} Radiation Dose Summary Observation(s)")
        cohort = http.get(COHORT).json()
        print(f"\nCohort query: GET {COHORT}")
        for entry in cohort.get("entry", []):
            study = entry["resource"]
            print(f"  -> {study.get('description')} ({study['identifier'][0]['value']})")
        print(f"  {cohort.get('total', len(cohort.get('entry', [])))} match(es)")

    print("\n$ dicomcast run --once   (again: nothing changed, nothing is written)")
    subprocess.run([*dicomcast, "run", "--once"], env=env, check=False)
    print("\n$ dicomcast status")
    subprocess.run([*dicomcast, "status"], env=env, check=False)
    if args.keep:
        print("\nservers keep running; Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return code


if __name__ == "__main__":
    raise SystemExit(main())
