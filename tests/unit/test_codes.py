"""Coded values: issuers become valid URIs or nothing, codes go under a standard system only
when they exist there, modalities come from the DICOM tables."""

from __future__ import annotations

from typing import Any

import pytest

from dicomcast.mapping.codes import (
    UnknownIssuer,
    acquisition_modality_coding,
    code_item_to_coding,
    code_item_to_concept,
    is_sctid,
    issuer_system,
    modality_coding,
    patient_issuer_system,
)
from dicomcast.mapping.context import ConvertContext
from dicomcast.mapping.mapper import default_mapping_dir
from dicomcast.mapping.tables import load_tables

TABLES = load_tables(default_mapping_dir() / "tables")
SCT = "http://snomed.info/sct"
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def ctx(**config: Any) -> ConvertContext:
    return ConvertContext(
        config={"issuer_systems": {"HOSP": "urn:oid:1.2.3"}, **config}, tables=TABLES
    )


def issuer(universal: str, kind: str | None = None, local: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00400032": {"Value": [universal]}}
    if kind:
        item["00400033"] = {"Value": [kind]}
    if local:
        item["00400031"] = {"Value": [local]}
    return item


def code(value: str, designator: str, meaning: str = "Meaning") -> dict[str, Any]:
    return {
        "00080100": {"Value": [value]},
        "00080102": {"Value": [designator]},
        "00080104": {"Value": [meaning]},
    }


def test_issuers_become_uris_or_nothing() -> None:
    assert issuer_system(issuer("1.2.3.4", "ISO"), ctx()) == "urn:oid:1.2.3.4"
    uuid_text = "A1B2C3D4-0000-0000-0000-000000000000"
    expected = "urn:uuid:a1b2c3d4-0000-0000-0000-000000000000"
    assert issuer_system(issuer(uuid_text, "UUID"), ctx()) == expected
    assert issuer_system("HOSP", ctx()) == "urn:oid:1.2.3"
    context = ctx()
    assert issuer_system("UNKNOWN", context) is None
    assert context.warnings == ["issuer 'UNKNOWN' is not in DICOMCAST_ISSUER_SYSTEMS"]


def test_braced_uuid_issuers_are_the_same_uuid() -> None:
    braced = issuer("{6BA7B810-9DAD-11D1-80B4-00C04FD430C8}", "UUID")
    assert issuer_system(braced, ctx()) == "urn:uuid:6ba7b810-9dad-11d1-80b4-00c04fd430c8"


@pytest.mark.parametrize(
    "bad",
    [
        issuer("1.2.03.4", "ISO"),  # leading zero
        issuer("1.2.3.", "ISO"),
        issuer("6ba7b810-9dad-11d1-80b4", "UUID"),
        issuer("not a uri", "URI"),
    ],
)
def test_invalid_issuers_are_dropped_with_a_warning(bad: dict[str, Any]) -> None:
    context = ctx()
    assert issuer_system(bad, context) is None
    assert any("issuer dropped" in w for w in context.warnings)


def test_an_invalid_universal_issuer_falls_back_to_its_local_name() -> None:
    assert issuer_system(issuer("1.2.03.4", "ISO", local="HOSP"), ctx()) == "urn:oid:1.2.3"


def test_an_unknown_patient_issuer_parks_the_study_by_default() -> None:
    """Patient 123 of hospital A and of hospital B must never become one Patient."""
    with pytest.raises(UnknownIssuer, match="unknown issuer of patient ID 'HOSP-B'") as caught:
        patient_issuer_system("HOSP-B", ctx())
    assert "DICOMCAST_ISSUER_SYSTEMS" in str(caught.value)
    with pytest.raises(UnknownIssuer):
        patient_issuer_system(issuer("1.2.03.4", "ISO"), ctx())
    assert patient_issuer_system("HOSP", ctx()) == "urn:oid:1.2.3"
    assert patient_issuer_system(issuer("1.2.3.4", "ISO"), ctx()) == "urn:oid:1.2.3.4"


def test_unknown_patient_issuers_under_the_other_policies() -> None:
    fallback = ctx(unknown_issuer="default-system")
    assert patient_issuer_system("HOSP-B", fallback) is None
    assert "default patient ID system" in fallback.warnings[0]
    derive = ctx(unknown_issuer="derive", issuer_system_base="https://h.example/sid/issuer/")
    assert patient_issuer_system("HOSP B", derive) == "https://h.example/sid/issuer/HOSP%20B"
    assert issuer_system("HOSP B", derive) == "https://h.example/sid/issuer/HOSP%20B"


def test_code_items_use_uri_systems_never_designators() -> None:
    assert code_item_to_concept(code("51185008", "SCT", "Thorax"), ctx()) == {
        "coding": [{"system": SCT, "code": "51185008", "display": "Thorax"}],
        "text": "Thorax",
    }
    context = ctx()
    assert code_item_to_concept(code("X1", "99LOCAL", "Local thing"), context) == {
        "text": "Local thing"
    }
    assert "coding_schemes" in context.warnings[0]


def test_snomed_rt_codes_become_snomed_ct_or_text() -> None:
    assert code_item_to_coding(code("T-D4000", "SRT", "Abdomen"), ctx()) == {
        "system": SCT,
        "code": "113345001",
        "display": "Abdomen",
    }
    context = ctx()
    assert code_item_to_concept(code("T-XXXXX", "SRT", "Nowhere"), context) == {"text": "Nowhere"}
    assert "no SNOMED CT equivalent" in context.warnings[0]
    # An SRT code written under SCT is still not a SNOMED CT identifier.
    assert code_item_to_coding(code("T-D4000", "SCT"), ctx())["code"] == "113345001"


def test_snomed_ct_identifiers_are_checked_by_form() -> None:
    assert is_sctid("51185008") and is_sctid("113345001") and is_sctid("24028007")
    assert not is_sctid("51185009")  # check digit
    assert not is_sctid("051185008") and not is_sctid("T-D4000") and not is_sctid("12345")
    context = ctx()
    assert code_item_to_coding(code("51185009", "SCT"), context) is None


def test_dicom_codes_must_exist_in_ps3_16() -> None:
    assert code_item_to_coding(code("113001", "DCM", "whatever"), ctx()) == {
        "system": DCM,
        "code": "113001",
        "display": "Rejected for Quality Reasons",
    }
    context = ctx()
    assert code_item_to_concept(code("123456", "DCM", "Made up"), context) == {"text": "Made up"}
    assert "not in PS3.16" in context.warnings[0]


def test_a_malformed_code_value_costs_the_coding_not_the_study() -> None:
    context = ctx()
    assert code_item_to_concept(code("A  B", "99LOCAL", "Odd"), context) == {"text": "Odd"}
    assert "double spaces" in context.warnings[0]


def test_modalities_come_from_the_dicom_tables() -> None:
    assert modality_coding("ot", ctx()) == {
        "system": DCM,
        "code": "OT",
        "display": "Other Modality",
    }
    assert modality_coding("SR", ctx())["display"] == "Structured Report Document"
    context = ctx()
    assert modality_coding("xyz", context) == {"display": "XYZ"}
    assert "not a DICOM modality" in context.warnings[0]
    assert acquisition_modality_coding("XYZ", ctx()) is None
    assert acquisition_modality_coding("SR", ctx()) is None
    assert acquisition_modality_coding("MR", ctx())["code"] == "MR"
