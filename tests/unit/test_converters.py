"""DICOM value -> FHIR value conversions, including the malformed values archives contain."""

from __future__ import annotations

from typing import Any

import pytest

from dicomcast.mapping.converters import (
    ConversionError,
    ConvertContext,
    da_to_date,
    date_time_to_datetime,
    dt_to_datetime,
    pn_to_humannames,
    pn_to_text,
    to_unsigned_int,
    uid_to_urn_oid,
)

CTX = ConvertContext(
    config={"timezone": "Europe/Berlin", "issuer_systems": {"HOSP": "urn:oid:1.2.3"}},
    tables={},
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20260102", "2026-01-02"),
        ("2026.01.02", "2026-01-02"),
        ("197001", "1970-01"),
        ("1970", "1970"),
    ],
)
def test_dates_keep_their_precision(value: str, expected: str) -> None:
    assert da_to_date(value, CTX) == expected


@pytest.mark.parametrize("value", ["20260230", "2026-01-02", "0000", "abc", "202613", ""])
def test_bad_dates_are_refused(value: str) -> None:
    with pytest.raises(ConversionError):
        da_to_date(value, CTX)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("20260102", "093015", "+0100"), "2026-01-02T09:30:15+01:00"),
        (("20260102", "0930", None), "2026-01-02T09:30:00+01:00"),  # winter: CET
        (("20260702", "0930", None), "2026-07-02T09:30:00+02:00"),  # summer: CEST
        (("20260102", "09", "-0500"), "2026-01-02T09:00:00-05:00"),
        (("20260102", "093015.5", "+0000"), "2026-01-02T09:30:15.5+00:00"),
        (("20260102", None, None), "2026-01-02"),  # never invent midnight
        (("202601", "0930", None), "2026-01"),  # no time without a full date
        ((None, "0930", None), None),
    ],
)
def test_study_date_time_offsets(parts: tuple[Any, ...], expected: str | None) -> None:
    assert date_time_to_datetime(parts, CTX) == expected


@pytest.mark.parametrize(
    "bad", [("20260102", "2561", None), ("20260102", "0930", "+2500"), ("20260102", "09h30", None)]
)
def test_bad_times_and_offsets_keep_the_date_with_a_warning(bad: tuple[Any, ...]) -> None:
    ctx = ConvertContext(config={}, tables={})
    assert date_time_to_datetime(bad, ctx) == "2026-01-02"
    assert len(ctx.warnings) == 1 and "time dropped, date kept" in ctx.warnings[0]
    with pytest.raises(ConversionError):
        date_time_to_datetime(("2026-01-02", "0930", None), ctx)


def test_dt_values() -> None:
    assert dt_to_datetime("20260102093015.123456+0200", CTX) == "2026-01-02T09:30:15.123456+02:00"
    assert dt_to_datetime("2026", CTX) == "2026"
    assert dt_to_datetime("202601021015", CTX) == "2026-01-02T10:15:00+01:00"
    with pytest.raises(ConversionError):
        dt_to_datetime("2026-01-02T10:15", CTX)


def test_person_name_groups_and_components() -> None:
    names = pn_to_humannames(
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}, CTX
    )
    assert [n.get("family") for n in names] == ["Yamada", "山田", "やまだ"]
    assert "extension" not in names[0]
    assert names[1]["extension"][0]["valueCode"] == "IDE"
    assert names[2]["extension"][0]["valueCode"] == "SYL"
    assert all(n["use"] == "official" for n in names)
    assert pn_to_humannames("=山田^太郎", CTX)[0]["family"] == "山田"
    assert pn_to_text("House^Gregory^^Dr.", CTX) == "Dr. Gregory House"
    assert pn_to_humannames({"Alphabetic": "^^^^"}, CTX) == []


@pytest.mark.parametrize("bad", ["a^b^c^d^e^f", "a=b=c=d", 42, {"Nonsense": "x"}])
def test_malformed_person_names_are_refused(bad: Any) -> None:
    with pytest.raises(ConversionError):
        pn_to_humannames(bad, CTX)


def test_uids_and_integers() -> None:
    assert uid_to_urn_oid("1.2.840.10008.1", CTX) == "urn:oid:1.2.840.10008.1"
    for bad in ["1.02.3", "1..2", "abc", "1." * 40]:
        with pytest.raises(ConversionError):
            uid_to_urn_oid(bad, CTX)
    assert to_unsigned_int(" 12 ", CTX) == 12
    assert to_unsigned_int(3.0, CTX) == 3
    for wrong in ["-1", "1.5", "x", True]:
        with pytest.raises(ConversionError):
            to_unsigned_int(wrong, CTX)


def test_person_names_split_into_their_parts() -> None:
    """PS3.5 6.2: given/middle names, prefixes and suffixes are lists separated by spaces,
    so `Patient?given=Robert` finds John Robert Quincy Adams."""
    [name] = pn_to_humannames("Adams^John Robert^Quincy^Rev.^B.A. M.Div.", CTX)
    assert name == {
        "use": "official",
        "text": "Rev. John Robert Quincy Adams B.A. M.Div.",
        "family": "Adams",
        "given": ["John", "Robert", "Quincy"],
        "prefix": ["Rev."],
        "suffix": ["B.A.", "M.Div."],
    }
    assert pn_to_text("Adams^John Robert^Quincy^Rev.^B.A. M.Div.", CTX) == (
        "Rev. John Robert Quincy Adams B.A. M.Div."
    )
