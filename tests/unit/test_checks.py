"""The last checks before writing: FHIR strings hold no control characters, and an optional
element the R4 model refuses is dropped with a warning instead of refusing the study."""

from __future__ import annotations

from typing import Any

import pytest

from dicomcast.errors import MappingError
from dicomcast.mapping.checks import checked, clean_text, scrub


def study(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}],
        "status": "available",
        "subject": {"reference": "Patient/1"},
        "series": [
            {
                "uid": "1.2.3.4",
                "modality": {
                    "system": "http://dicom.nema.org/resources/ontology/DCM",
                    "code": "CT",
                },
                "instance": [
                    {"uid": "1.2.3.4.5", "sopClass": {"system": "urn:ietf:rfc:3986", "code": "x"}}
                ],
            }
        ],
        **extra,
    }


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("CT\x1b$B chest", "CT chest"),  # an ISO 2022 escape nobody decoded
        ("a\x00b\x07c", "abc"),
        ("line\r\nnext\ttab", "line\r\nnext\ttab"),  # allowed by FHIR
        ("Yamada\u3000Tarou", "Yamada Tarou"),  # FHIR strings allow only these spaces
        ("\ufeffBOM", "BOM"),
        ("Müller", "Müller"),
    ],
)
def test_fhir_strings_lose_control_characters(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_scrub_names_the_element_never_the_value() -> None:
    warnings: list[str] = []
    out = scrub(study(description="CT\x1b$B chest", location={"display": "\x01"}), warnings)
    assert out["description"] == "CT chest"
    assert "display" not in out["location"]
    assert warnings == [
        "ImagingStudy.description: control characters, escapes or odd spaces removed",
        "ImagingStudy.location.display: control characters, escapes or odd spaces removed",
    ]


def test_an_invalid_optional_element_is_dropped_with_a_warning() -> None:
    bad_code = {"coding": [{"system": "http://x", "code": "A  B"}], "text": "Odd"}
    good = {"coding": [{"system": "http://x", "code": "OK"}]}
    warnings: list[str] = []
    out = checked(study(procedureCode=[bad_code, good]), warnings)
    assert out["procedureCode"] == [{"text": "Odd"}, good]
    assert warnings == [
        "ImagingStudy.procedureCode.coding.code: dropped: not valid FHIR R4 "
        "(string_pattern_mismatch)"
    ]


def test_a_series_keeps_its_identity_when_an_element_of_it_is_dropped() -> None:
    resource = study()
    resource["series"][0]["bodySite"] = {"code": "A  B"}
    out = checked(resource, [])
    assert "bodySite" not in out["series"][0] and out["series"][0]["uid"] == "1.2.3.4"


def test_errors_in_what_identifies_the_resource_refuse_it() -> None:
    resource = study()
    resource["series"][0]["modality"] = {"code": "C  T"}
    with pytest.raises(MappingError, match=r"series\.0\.modality\.code"):
        checked(resource, [])
    with pytest.raises(MappingError, match="identifier"):
        bad_type = {"coding": [{"code": "M  R"}]}
        checked(study(identifier=[{"system": "urn:x", "value": "v", "type": bad_type}]), [])
