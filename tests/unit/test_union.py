"""The union of several sources' parts of one study: a pure function of the parts."""

from __future__ import annotations

import copy
from typing import Any

from dicomcast.mapping.union import Part, union

CT = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}
MR = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "MR"}


def series(uid: str, *instances: str, modality: dict[str, str] = CT) -> dict[str, Any]:
    return {
        "uid": uid,
        "modality": modality,
        "numberOfInstances": len(instances),
        "instance": [{"uid": i, "sopClass": {"code": "x"}} for i in instances],
    }


def study(description: str, *items: dict[str, Any], endpoint: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "description": description,
        "subject": {"reference": f"urn:uuid:{description}"},
        "endpoint": [{"reference": endpoint}],
        "modality": list({i["modality"]["code"]: i["modality"] for i in items}.values()),
        "numberOfSeries": len(items),
        "numberOfInstances": sum(len(i["instance"]) for i in items),
        "series": list(items),
    }


PACS = Part(study("pacs", series("1", "a", "b"), series("2", "c"), endpoint="E/1"), "E/1")
CLOUD = Part(
    study("cloud", series("2", "c", "d"), series("3", "e", modality=MR), endpoint="E/2"), "E/2"
)


def test_series_and_instances_are_unioned_and_point_at_their_endpoints() -> None:
    merged = union([PACS, CLOUD])
    assert merged["description"] == "pacs"  # the higher-priority part's study elements
    assert [s["uid"] for s in merged["series"]] == ["1", "2", "3"]
    assert {s["uid"]: [e["reference"] for e in s["endpoint"]] for s in merged["series"]} == {
        "1": ["E/1"],
        "2": ["E/1", "E/2"],
        "3": ["E/2"],
    }
    assert [i["uid"] for i in merged["series"][1]["instance"]] == ["c", "d"]
    assert merged["series"][1]["numberOfInstances"] == 2
    assert (merged["numberOfSeries"], merged["numberOfInstances"]) == (3, 5)
    assert merged["endpoint"] == [{"reference": "E/1"}, {"reference": "E/2"}]
    assert merged["modality"] == [CT, MR]


def test_one_part_is_written_as_it_is_and_the_subject_is_the_syncing_sources() -> None:
    assert union([CLOUD]) == CLOUD.study
    subject = {"reference": "urn:uuid:me"}
    assert union([PACS, CLOUD], subject)["subject"] == subject


def test_the_union_leaves_the_parts_as_they_were() -> None:
    before = copy.deepcopy([PACS, CLOUD])
    union([PACS, CLOUD])
    assert before == [PACS, CLOUD]  # stored parts are reused by the next union
