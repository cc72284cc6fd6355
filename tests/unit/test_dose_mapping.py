"""Dose reports (RDSR) -> Radiation Dose Summary Observations: what the bundled
dose-summary.yaml makes of the three report kinds, and what it does with broken ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicomcast.errors import MappingFileError
from dicomcast.mapping.mapper import MappedStudy, Mappings, default_mapping_dir
from dicomcast.mapping.settings import MAPPING_CONFIG_KEYS
from dicomcast.sandbox.dose_reports import code, num
from dicomcast.sandbox.samples import DEMO_ISSUERS, SeriesSpec, StudySpec, instances
from dicomcast.studyview import build_study_views, dataset_filter
from tests.dose import components, quantity

CONFIG: dict[str, Any] = {
    "patient_id_system": "urn:oid:1.2.3",
    "issuer_systems": DEMO_ISSUERS,
    "timezone": "UTC",
    "source_name": "s",
    "source_public_url": "http://s",
    "accession_system": "urn:oid:1.2.3.4",
}
MAPPINGS = Mappings.load(None, MAPPING_CONFIG_KEYS)
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def spec(kind: str, key: str = "dose") -> StudySpec:
    modality = {"ct": "CT", "xray": "XA", "nm": "NM"}[kind]
    return StudySpec(
        key=f"{key}-{kind}",
        patient_id="P1",
        patient_name="Doe^Jane",
        accession="ACC-9",
        series=[
            SeriesSpec(modality, 3, number=1),
            SeriesSpec("SR", 1, "Dose report", number=99, dose=kind),
        ],
    )


def mapped_of(datasets: list[Dataset], mappings: Mappings = MAPPINGS) -> MappedStudy:
    (view,), _ = build_study_views([ds.to_json_dict() for ds in datasets])
    return mappings.map_study(view, CONFIG, "Endpoint/e")


def test_a_ct_dose_report_becomes_one_summary_observation() -> None:
    study = spec("ct")
    datasets = list(instances(study))
    report = datasets[-1]
    mapped = mapped_of(datasets)
    [observation] = mapped.observations
    assert mapped.warnings == ()
    assert observation["identifier"][0]["system"] == "urn:dicom:uid"
    assert observation["identifier"][0]["value"] == f"urn:oid:{report.SOPInstanceUID}"
    assert observation["status"] == "final"
    assert observation["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "73569-6",
        "display": observation["code"]["coding"][0]["display"],
    }
    assert observation["subject"] == {"reference": mapped.patient_placeholder}
    assert observation["partOf"][0]["reference"] == mapped.study_placeholder
    assert observation["partOf"][0]["identifier"]["value"] == f"urn:oid:{study.study_uid}"
    assert observation["focus"] == [{"reference": mapped.study_placeholder}]
    assert observation["effectiveDateTime"] == "2026-01-02T09:30:15+00:00"
    assert observation["performer"] == [{"type": "Practitioner", "display": "John Moore"}]
    assert observation["device"]["display"] == "CT01"
    assert observation["valueString"] == "CT Dose Length Product Total = 203.12 mGy.cm"
    found = components(observation)
    # SNOMED RT P5-08000 (as the device sent it) is written as SNOMED CT.
    assert found["121058"]["coding"][0]["code"] == "77477000"
    assert found["113813"] == quantity(203.12, "mGy.cm")
    assert observation["basedOn"][0]["identifier"]["value"] == "ACC-9"


def test_a_projection_xray_report_keeps_dicom_units() -> None:
    [observation] = mapped_of(list(instances(spec("xray")))).observations
    found = components(observation)
    assert found["121058"]["coding"][0]["code"] == "113704"
    assert found["113725"] == quantity(0.212, "Gy")
    assert found["113722"] == quantity(0.0013639, "Gy.m2")
    assert found["113726"] == quantity(0.0004523, "Gy.m2")
    assert found["113727"] == quantity(0.0009116, "Gy.m2")
    assert found["113730"] == quantity(450, "s")
    assert found["113731"] == 42
    assert observation["valueString"].startswith("Dose (RP) Total = 0.212 Gy")


def test_a_radiopharmaceutical_report_names_agent_nuclide_and_route() -> None:
    [observation] = mapped_of(list(instances(spec("nm")))).observations
    found = components(observation)
    # No Procedure reported item in TID 10021: what the template is for.
    assert found["121058"]["coding"][0]["code"] == "113502"
    assert found["113507"] == quantity(154, "MBq")
    assert found["123005"] == quantity(2.5, "cm3")
    assert found["349358000"]["coding"][0]["code"] == "429296007"
    # Radionuclide is found by its retired SNOMED RT name (C-10072) and translated.
    assert found["89457008"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "21572004",
        "display": "^123^Iodine",
    }
    assert found["410675002"]["coding"][0]["code"] == "47625008"
    assert observation["effectiveDateTime"] == "2026-01-02T09:30:15+00:00"


def _replace(item: Dataset, concept: str, make: Any) -> bool:
    """Replace, in place, the first content item named `concept` below `item`."""
    for index, child in enumerate(getattr(item, "ContentSequence", [])):
        if child.ConceptNameCodeSequence[0].CodeValue == concept:
            item.ContentSequence[index] = make(child)
            return True
        if _replace(child, concept, make):
            return True
    return False


def test_a_malformed_item_costs_one_component_with_a_warning_naming_it() -> None:
    datasets = list(instances(spec("xray")))
    report = datasets[-1]

    def no_units(child: Dataset) -> Dataset:
        del child.MeasuredValueSequence[0].MeasurementUnitsCodeSequence
        return child

    def as_text(child: Dataset) -> Dataset:
        child.ValueType = "TEXT"
        child.TextValue = "450 seconds"
        del child.MeasuredValueSequence
        return child

    assert _replace(report, "113722", no_units)
    assert _replace(report, "113730", as_text)
    mapped = mapped_of(datasets)
    [observation] = mapped.observations
    found = components(observation)
    assert "113722" not in found and "113730" not in found
    assert found["113725"] == quantity(0.212, "Gy")  # the rest is written
    text = "\n".join(mapped.warnings)
    assert "dose-summary.yaml:" in text
    assert "content item DCM:113722" in text and "no measurement units" in text
    assert "content item DCM:113730" in text and "is TEXT, expected NUM" in text
    assert mapped.imaging_study["numberOfInstances"] == 4


def test_a_report_of_no_known_template_makes_no_observation_but_the_study_is_written() -> None:
    datasets = list(instances(spec("ct")))
    report = datasets[-1]
    report.ContentTemplateSequence[0].TemplateIdentifier = "99999"
    report.ContentSequence = [
        num(
            "CONTAINS", code("113812", "DCM", "Total Number of Irradiation Events"), "1", "{events}"
        )
    ]
    mapped = mapped_of(datasets)
    assert mapped.observations == ()
    assert mapped.imaging_study["numberOfInstances"] == 4
    text = "\n".join(mapped.warnings)
    assert f"no Observation for instance {report.SOPInstanceUID}" in text
    assert "valueString: required, but no usable value came from the joined items" in text


def test_dose_observations_turned_off_read_no_report_content() -> None:
    off = Mappings.load(None, MAPPING_CONFIG_KEYS, per_instance=False)
    assert mapped_of(list(instances(spec("ct"))), off).observations == ()
    assert off.content_classes() == frozenset()
    assert "0040A730" not in off.tags_read()  # ContentSequence
    assert "0040A730" in MAPPINGS.tags_read()


def test_only_dose_reports_keep_their_content_tree_when_metadata_is_read() -> None:
    datasets = list(instances(spec("ct")))
    image = datasets[0]
    image.ContentSequence = list(datasets[-1].ContentSequence)  # an image carrying a tree
    hook = dataset_filter(MAPPINGS.tags_read(), MAPPINGS.content_classes())
    kept = json.loads(json.dumps([ds.to_json_dict() for ds in datasets]), object_hook=hook)
    assert "0040A730" not in kept[0]
    assert "0040A730" in kept[-1]
    [accumulated] = [
        item
        for item in kept[-1]["0040A730"]["Value"]
        if item["0040A043"]["Value"][0]["00080100"]["Value"] == ["113811"]
    ]
    assert "0040A730" in accumulated  # a content item's own tree is kept


def test_an_sr_rule_that_cannot_be_read_stops_loading_with_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "mappings"
    shutil.copytree(default_mapping_dir(), folder)
    path = folder / "dose-summary.yaml"
    path.write_text(path.read_text().replace('sr: "DCM:113813"', 'sr: "113813"', 1))
    with pytest.raises(MappingFileError, match=r"dose-summary.yaml:\d+: sr: '113813' is not"):
        Mappings.load(folder, MAPPING_CONFIG_KEYS)


def test_a_path_and_a_condition_select_the_item_the_rule_means(tmp_path: Path) -> None:
    folder = tmp_path / "mappings"
    shutil.copytree(default_mapping_dir(), folder)
    path = folder / "dose-summary.yaml"
    extra = """
note:
  - foreach: {sr: "DCM:113819 > DCM:113838", many: true}
    each:
      text: {from: $item, as: sr_measurement_text}
  - text: {sr: "DCM:113870[DCM:113875=DCM:113851]", as: sr_person}
"""
    path.write_text(path.read_text() + extra)
    mappings = Mappings.load(folder, MAPPING_CONFIG_KEYS)
    [observation] = mapped_of(list(instances(spec("ct"))), mappings).observations
    # Every event's DLP; and no person has the Irradiation Administering role.
    assert observation["note"] == [{"text": "DLP = 157.07 mGy.cm"}, {"text": "DLP = 46.05 mGy.cm"}]
