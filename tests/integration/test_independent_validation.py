"""dicomcast's output checked by validators it was not built with: @medplum/core (the FHIR
4.0.1 definitions, primitive regexes, every FHIRPath invariant) and the `fhir` npm package,
over the demo studies, pydicom's own test files and hostile values. Any error fails."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomcast.errors import StudyError
from dicomcast.mapping.mapper import Mappings, placeholder
from dicomcast.mapping.settings import MAPPING_CONFIG_KEYS
from dicomcast.sandbox.dose_reports import KINDS as DOSE_KINDS
from dicomcast.sandbox.samples import (
    DEMO_ISSUERS,
    DEMO_PATIENT_SYSTEM,
    SeriesSpec,
    StudySpec,
    demo_studies,
    instances,
)
from dicomcast.sources.files import dataset_to_json, read_studies
from dicomcast.studyview import StudyView, build_study_views

VALIDATOR = Path(__file__).resolve().parents[1] / "validator"
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CONFIG = {
    "patient_id_system": DEMO_PATIENT_SYSTEM,
    "accession_system": "urn:oid:1.2.826.0.1.3680043.8.498.2",
    "issuer_systems": DEMO_ISSUERS,
    "unknown_issuer": "default-system",  # pydicom's files name issuers no one mapped
    "issuer_system_base": None,
    "timezone": "Europe/Berlin",
    "source_name": "validation",
    "source_public_url": "http://localhost:8042/dicom-web",
}


def hostile() -> Dataset:
    """A study with what archives really hold: controls, escapes, bad codes, odd names."""
    [ds, *_] = instances(demo_studies()[0])
    ds.StudyDescription = "CT\x1b$B chest\x07"
    ds.InstitutionName = "Klinik\u3000Nord"
    ds.PatientName = "Adams^John Robert^Quincy^Rev.^B.A. M.Div."
    ds.ReferringPhysicianName = "Doe^\x01Jane"
    ds.Modality = "XYZ"
    ds.ModalitiesInStudy = ["CT", "xyz"]

    def code(value: str, scheme: str, meaning: str) -> Dataset:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
        return item

    ds.ProcedureCodeSequence = Sequence(
        [code("A  B", "99LOCAL", "Odd"), code("123456", "DCM", "Made up")]
    )
    ds.AnatomicRegionSequence = Sequence([code("T-D4000", "SRT", "Abdomen")])
    ds.ReasonForRequestedProcedureCodeSequence = Sequence([code("51185009", "SCT", "Bad SCT")])
    issuer = Dataset()
    issuer.UniversalEntityID, issuer.UniversalEntityIDType = "1.2.03.4", "ISO"
    ds.IssuerOfAccessionNumberSequence = Sequence([issuer])
    return ds


def views() -> Iterator[StudyView]:
    doses = StudySpec(
        key="validation-doses",
        patient_id="V1",
        patient_name="Dose^Valid",
        accession="ACC-V1",
        series=[
            SeriesSpec("CT", 1, number=1),
            *(SeriesSpec("SR", 1, number=90 + n, dose=k) for n, k in enumerate(DOSE_KINDS)),
        ],
    )
    demo = [dataset_to_json(ds)[0] for spec in [*demo_studies(), doses] for ds in instances(spec)]
    yield from build_study_views(demo)[0]
    yield from build_study_views([dataset_to_json(hostile())[0]])[0]
    yield from read_studies([PYDICOM_FILES])[0]


def mapped_resources() -> tuple[list[dict[str, Any]], int]:
    """Every resource as it is written: with ids, and references as the writer resolves
    them (the mapper's `urn:uuid:` placeholders become `Patient/<id>`, `Endpoint/<id>`)."""
    mappings = Mappings.load(None, MAPPING_CONFIG_KEYS)
    endpoint = {**mappings.map_endpoint(CONFIG), "id": "e"}
    endpoint_ref = placeholder("Endpoint", "validation")
    resources = [endpoint]
    refused = 0
    for number, view in enumerate(views()):
        try:
            study = mappings.map_study(view, CONFIG, endpoint_ref)
        except StudyError:
            refused += 1  # refused with a reason: nothing is written, nothing to check
            continue
        text = json.dumps([study.imaging_study, *study.observations])
        text = text.replace(study.patient_placeholder, f"Patient/p{number}")
        text = text.replace(study.study_placeholder or "-", f"ImagingStudy/s{number}")
        text = text.replace(endpoint_ref, "Endpoint/e")
        imaging, *observations = json.loads(text)
        resources += [
            {**study.patient, "id": f"p{number}"},
            {**imaging, "id": f"s{number}"},
            *({**o, "id": f"o{number}-{n}"} for n, o in enumerate(observations)),
        ]
    return resources, refused


@pytest.fixture(scope="module")
def validator() -> Path:
    if shutil.which("node") is None or not (VALIDATOR / "node_modules").is_dir():
        pytest.fail(
            "the validator is not installed: run ./scripts/test (npm ci in tests/validator)"
        )
    return VALIDATOR


def test_every_mapped_resource_passes_two_independent_validators(validator: Path) -> None:
    resources, refused = mapped_resources()
    studies = sum(1 for r in resources if r["resourceType"] == "ImagingStudy")
    assert studies >= 20 and refused < studies  # pydicom's files are mostly mappable
    assert sum(1 for r in resources if r["resourceType"] == "Observation") >= 4
    lines = "".join(json.dumps(r) + "\n" for r in resources)
    answer = subprocess.run(
        ["node", "validate.mjs"],
        cwd=validator,
        input=lines,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    results = [json.loads(line) for line in answer.stdout.splitlines()]
    assert len(results) == len(resources)
    errors = [
        f"{result['resource']} ({by}): {message}"
        for result in results
        for by in ("medplum", "fhir")
        for message in result[by]
    ]
    assert errors == [], "\n".join(errors[:40])
