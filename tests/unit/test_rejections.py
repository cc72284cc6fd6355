"""IHE IOCM: a rejection note hides the instances it rejects, and itself; series it empties
go, counts follow; a study whose every instance is withdrawn is gone."""

from __future__ import annotations

from dicomcast.mapping.mapper import Mappings
from dicomcast.mapping.settings import MAPPING_CONFIG_KEYS
from dicomcast.sandbox.samples import (
    DEMO_ISSUERS,
    SeriesSpec,
    StudySpec,
    instances,
    rejection_note,
)
from dicomcast.sources.files import dataset_to_json
from dicomcast.studyview import StudyView, build_study_views

SPEC = StudySpec(
    key="iocm",
    patient_id="IOCM1",
    patient_name="Iocm^Test",
    issuer="HOSP-A",
    series=[SeriesSpec("CT", 3, "axial", number=1), SeriesSpec("CT", 1, "scout", number=2)],
)
CONFIG = {
    "patient_id_system": "urn:oid:1.2.3",
    "issuer_systems": DEMO_ISSUERS,
    "timezone": "UTC",
    "source_name": "t",
    "source_public_url": "http://t/dicom-web",
}


def view(*extra_code: str) -> tuple[list[StudyView], list[str]]:
    datasets = list(instances(SPEC))
    scout, first_axial = datasets[3], datasets[0]
    notes = [rejection_note(SPEC, [scout, first_axial], code) for code in extra_code]
    return build_study_views([dataset_to_json(ds)[0] for ds in datasets + notes])


def test_rejected_instances_and_the_note_leave_the_study() -> None:
    [study], _ = view("113001")
    assert [len(s.instances) for s in study.series] == [2]  # the scout's series went
    assert study.instance_count == 2 and study.hidden == 3  # 2 rejected + the note
    assert any("Rejected for Quality Reasons" in w for w in study.warnings)
    mapped = Mappings.load(None, MAPPING_CONFIG_KEYS).map_study(study, CONFIG, None)
    assert mapped.imaging_study["numberOfSeries"] == 1
    assert mapped.imaging_study["numberOfInstances"] == 2
    assert [c["code"] for c in mapped.imaging_study["modality"]] == ["CT"]  # no KO


def test_other_key_object_titles_hide_nothing() -> None:
    [study], _ = view("113000")  # Of Interest: not a rejection
    assert study.instance_count == 5 and study.hidden == 0


def test_a_study_whose_every_instance_is_rejected_is_gone() -> None:
    datasets = list(instances(SPEC))
    note = rejection_note(SPEC, datasets, "113039")
    studies, orphans = build_study_views([dataset_to_json(ds)[0] for ds in [*datasets, note]])
    assert studies == []
    assert any("Data Retention Policy Expired" in o for o in orphans)
