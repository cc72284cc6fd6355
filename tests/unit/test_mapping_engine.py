"""The mapping engine: compile-time errors with file:line, per-element drops, custom folders."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from dicomcast.app import MAPPING_CONFIG_KEYS
from dicomcast.errors import MappingError, MappingFileError
from dicomcast.mapping.mapper import Mappings, default_mapping_dir
from dicomcast.sandbox.samples import DEMO_ISSUERS
from dicomcast.studyview import build_study_views

CONFIG: dict[str, Any] = {
    "patient_id_system": "urn:oid:9.9",
    "accession_system": None,
    "issuer_systems": DEMO_ISSUERS,
    "timezone": "UTC",
    "source_name": "s",
    "source_public_url": "http://pacs/dicom-web",
}


def element(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def instance(**overrides: Any) -> dict[str, Any]:
    data = {
        "0020000D": element("UI", "1.2.3"),
        "0020000E": element("UI", "1.2.3.1"),
        "00080018": element("UI", "1.2.3.1.1"),
        "00080016": element("UI", "1.2.840.10008.5.1.4.1.1.2"),
        "00100020": element("LO", "PID1"),
        "00100010": element("PN", {"Alphabetic": "Doe^Jane"}),
        "00100030": element("DA", "19800101"),
        "00100040": element("CS", "F"),
        "00080060": element("CS", "CT"),
        "00080020": element("DA", "20260101"),
        "00080030": element("TM", "101010"),
        "00200011": element("IS", 1),
        "00200013": element("IS", 1),
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def mapped(mappings: Mappings, *instances: dict[str, Any]) -> Any:
    (study,), _ = build_study_views(instances)
    return mappings.map_study(study, CONFIG, "Endpoint/1")


@pytest.fixture(scope="module")
def bundled() -> Mappings:
    return Mappings.load(None, MAPPING_CONFIG_KEYS)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    target = tmp_path / "mappings"
    shutil.copytree(default_mapping_dir(), target)
    return target


def test_bad_value_drops_one_element_with_a_located_warning(bundled: Mappings) -> None:
    result = mapped(
        bundled, instance(**{"00080030": element("TM", "99x"), "00200011": element("IS", "-4")})
    )
    study = result.imaging_study
    assert study["started"] == "2026-01-01"  # no time: the bad time is dropped, not the date
    assert "number" not in study["series"][0]
    assert any(
        w.startswith("imagingstudy.yaml:") and "StudyTime (0008,0030)" in w for w in result.warnings
    ), result.warnings
    assert any("SeriesNumber (0020,0011)" in w for w in result.warnings)


def test_missing_patient_id_refuses_the_study_with_a_reason(bundled: Mappings) -> None:
    with pytest.raises(MappingError, match=r"patient\.yaml:\d+ identifier"):
        mapped(bundled, instance(**{"00100020": None}))


def test_study_modality_covers_every_series_and_skips_non_acquisition(bundled: Mappings) -> None:
    sr = instance(
        **{
            "0020000E": element("UI", "1.2.3.2"),
            "00080018": element("UI", "1.2.3.2.1"),
            "00080060": element("CS", "SR"),
            "00200011": element("IS", 2),
        }
    )
    study = mapped(bundled, instance(), sr).imaging_study
    assert [c["code"] for c in study["modality"]] == ["CT"]
    assert [s["modality"]["code"] for s in study["series"]] == ["CT", "SR"]
    # A stale ModalitiesInStudy (first instance: CT) must not hide the MR series.
    stale = instance(**{"00080061": element("CS", "CT")})
    mr = instance(
        **{
            "0020000E": element("UI", "1.2.3.3"),
            "00080018": element("UI", "1.2.3.3.1"),
            "00080060": element("CS", "MR"),
            "00080061": element("CS", "CT"),
        }
    )
    modalities = mapped(bundled, stale, mr).imaging_study["modality"]
    assert [c["code"] for c in modalities] == ["CT", "MR"]
    assert modalities[1]["display"] == "Magnetic Resonance"


def test_duplicate_instances_are_kept_once(bundled: Mappings) -> None:
    result = mapped(bundled, instance(), instance())
    assert result.imaging_study["numberOfInstances"] == 1
    assert any("duplicate SOPInstanceUID" in w for w in result.warnings)


def test_a_user_folder_changes_an_element_without_python(folder: Path) -> None:
    path = folder / "imagingstudy.yaml"
    path.write_text(
        path.read_text().replace(
            "description: {from: StudyDescription}",
            "description: {first: [{from: StudyDescription}, {const: no description}]}",
        )
    )
    study = mapped(Mappings.load(folder, MAPPING_CONFIG_KEYS), instance()).imaging_study
    assert study["description"] == "no description"


def refusal(folder: Path, edit: str) -> tuple[str, int]:
    """What loading says when imagingstudy.yaml's description line is `edit`, and the
    line's number."""
    path = folder / "imagingstudy.yaml"
    lines = path.read_text().splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith("description:"))
    lines[number] = edit
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MappingFileError) as caught:
        Mappings.load(folder, MAPPING_CONFIG_KEYS)
    return str(caught.value), number + 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            "description: {from: StudyDescriptionTypo}",
            "imagingstudy.yaml:LINE: unknown DICOM keyword",
        ),
        ("description: {from: StudyDescription, as: no_such}", "unknown converter 'no_such'"),
        ("description: {from: StudyDescription, lookup: nope}", "unknown table 'nope'"),
        ("description: {config: secret_key}", "unknown setting 'secret_key'"),
        ("description: {from: A, const: b}", "exactly one of"),
        ("description: {from: StudyDescription, colour: red}", "unknown key(s) ['colour']"),
        ("description: [unclosed", "not valid YAML"),
    ],
)
def test_broken_mapping_files_are_refused_with_file_and_line(
    folder: Path, edit: str, message: str
) -> None:
    said, line = refusal(folder, edit)
    assert message.replace("LINE", str(line)) in said


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            "descripton: {from: StudyDescription}",
            "imagingstudy.yaml:LINE: 'descripton' is not an element of ImagingStudy: "
            "did you mean 'description'?",
        ),
        (
            "description: {form: StudyDescription}",
            "imagingstudy.yaml:LINE: ImagingStudy.description takes a value, not an object "
            "with 'form': did you mean the directive 'from'?",
        ),
        (
            "note: [{txt: {from: StudyDescription}}]",
            "imagingstudy.yaml:LINE: 'txt' is not an element of ImagingStudy.note: "
            "did you mean 'text'?",
        ),
        (
            "note: {foreach: series, each: {tetx: {from: SeriesDescription}}}",
            "imagingstudy.yaml:LINE: 'tetx' is not an element of ImagingStudy.note: "
            "did you mean 'text'?",
        ),
    ],
)
def test_a_misspelled_element_or_directive_is_refused_at_load_not_dropped_from_every_study(
    folder: Path, edit: str, message: str
) -> None:
    """Before, `mappings ok`, and the element silently dropped from every study."""
    said, line = refusal(folder, edit)
    assert message.replace("LINE", str(line)) in said


def test_missing_file_and_bad_table_are_refused(folder: Path) -> None:
    table = folder / "tables" / "laterality.csv"
    good = table.read_text()
    table.write_text("value,system\nR\n")
    with pytest.raises(MappingFileError, match=r"laterality\.csv:2"):
        Mappings.load(folder, MAPPING_CONFIG_KEYS)
    table.write_text(good)
    (folder / "endpoint.yaml").unlink()
    with pytest.raises(MappingFileError, match=r"endpoint\.yaml is missing"):
        Mappings.load(folder, MAPPING_CONFIG_KEYS)


def test_output_is_validated_against_r4(folder: Path) -> None:
    path = folder / "imagingstudy.yaml"
    path.write_text(path.read_text().replace("status: available", "status: {const: 42}"))
    with pytest.raises(MappingError, match="not valid FHIR R4: status"):
        mapped(Mappings.load(folder, MAPPING_CONFIG_KEYS), instance())


def test_output_is_deterministic(bundled: Mappings) -> None:
    second = instance(**{"00080018": element("UI", "1.2.3.1.2"), "00200013": element("IS", 2)})
    a = mapped(bundled, instance(), second)
    b = mapped(bundled, second, instance())
    assert a.imaging_study == b.imaging_study and a.patient == b.patient


def test_validation_checks_each_instance_shape_once_and_still_catches_an_odd_one() -> None:
    from dicomcast.errors import MappingError
    from dicomcast.mapping.checks import checked
    from dicomcast.mapping.mapper import validation_sample

    instances = [
        {"uid": f"1.2.3.{n}", "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2"},
         "number": n}
        for n in range(1, 41)
    ]  # fmt: skip
    study = {
        "resourceType": "ImagingStudy",
        "status": "available",
        "subject": {"reference": "Patient/p"},
        "series": [{"uid": "1.2.3", "modality": {"code": "CT"}, "instance": instances}],
    }
    sample = validation_sample(study)
    assert len(sample["series"][0]["instance"]) == 1 and len(instances) == 40
    checked(study, [], validation_sample)
    instances[36] = {**instances[36], "number": "thirty-seven"}  # a different shape
    sample = validation_sample(study)
    assert len(sample["series"][0]["instance"]) == 2
    with pytest.raises(MappingError, match="number"):
        checked(study, [], validation_sample)


def test_the_tags_the_mappings_read_are_all_a_source_needs_to_keep() -> None:
    import json

    from dicomcast.sandbox.samples import demo_studies
    from dicomcast.studyview import dataset_filter
    from tests.fakes import dicom_json

    mappings = Mappings.load(None, MAPPING_CONFIG_KEYS)
    keep = mappings.tags_read()
    config: dict[str, Any] = {
        "patient_id_system": "urn:oid:1.2.3",
        "issuer_systems": DEMO_ISSUERS,
        "timezone": "UTC",
        "source_name": "s",
        "source_public_url": "http://s",
        "accession_system": None,
    }
    for spec in demo_studies():
        full = dicom_json(spec)
        hook = dataset_filter(keep, mappings.content_classes())
        kept = json.loads(json.dumps(full), object_hook=hook)
        assert sum(map(len, kept)) < sum(map(len, full))  # something was dropped...
        (whole,), _ = build_study_views(full)
        (trimmed,), _ = build_study_views(kept)
        a = mappings.map_study(whole, config, "Endpoint/e")
        b = mappings.map_study(trimmed, config, "Endpoint/e")
        assert (a.patient, a.imaging_study, a.observations, a.warnings) == (
            b.patient,
            b.imaging_study,
            b.observations,
            b.warnings,
        )


def test_the_bundled_mappings_name_only_fhir_elements(folder: Path) -> None:
    """They are not checked at each start (0.1 s of model imports): checked here, on a
    copy, as any user's folder is at its start."""
    assert Mappings.load(folder, MAPPING_CONFIG_KEYS).folder == folder
