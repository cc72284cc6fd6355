"""Named converters the mapping files call with `as:` — where a DICOM value becomes FHIR.

Each takes the value `from:` produced and a `ConvertContext`, returns a FHIR value or None,
and raises `ConversionError` for a malformed value: the engine then drops that one element
and records a warning naming the file, rule and tag.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dicomcast.mapping import dates
from dicomcast.mapping.codes import (
    TAGS_READ,
    code_item_to_coding,
    code_item_to_concept,
    issuer_system,
    patient_issuer_system,
)
from dicomcast.mapping.context import (
    CONVERTERS,
    ConversionError,
    ConvertContext,
    Converter,
    converter,
)

__all__ = [
    "TAGS_READ",
    "ConversionError",
    "ConvertContext",
    "code_item_to_coding",
    "code_item_to_concept",
    "da_to_date",
    "date_time_to_datetime",
    "dt_to_datetime",
    "get_converter",
    "issuer_system",
    "patient_issuer_system",
]

EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"


# --- text, numbers, UIDs ------------------------------------------------------------------

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


@converter("text")
def to_text(value: Any, ctx: ConvertContext) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _uid(value: Any) -> str:
    uid = str(value).strip().rstrip("\x00")
    if not uid or len(uid) > 64 or not _UID.match(uid):
        raise ConversionError(f"{value!r} is not a valid DICOM UID")
    return uid


@converter("uid")
def to_uid(value: Any, ctx: ConvertContext) -> str:
    return _uid(value)


@converter("uid_to_urn_oid")
def uid_to_urn_oid(value: Any, ctx: ConvertContext) -> str:
    return f"urn:oid:{_uid(value)}"


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise ConversionError(f"{value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if not re.fullmatch(r"[+-]?\d{1,12}", text):
        raise ConversionError(f"{value!r} is not a DICOM integer string (IS)")
    return int(text)


@converter("unsigned_int")
def to_unsigned_int(value: Any, ctx: ConvertContext) -> int:
    number = _integer(value)
    if number < 0:
        raise ConversionError(f"{value!r} is negative; FHIR unsignedInt needs >= 0")
    return number


@converter("positive_int")
def to_positive_int(value: Any, ctx: ConvertContext) -> int:
    number = _integer(value)
    if number < 1:
        raise ConversionError(f"{value!r} is not positive; FHIR positiveInt needs >= 1")
    return number


# --- person names ---------------------------------------------------------------------------

_REPRESENTATION = {"Alphabetic": None, "Ideographic": "IDE", "Phonetic": "SYL"}


def _pn_groups(value: Any) -> dict[str, str]:
    """A PN from DICOM JSON (`{"Alphabetic": ...}`) or as text (`A=I=P`) -> its groups."""
    if isinstance(value, Mapping):
        groups = {k: str(value[k]) for k in _REPRESENTATION if isinstance(value.get(k), str)}
        if not groups and value:
            raise ConversionError("person name object has no Alphabetic/Ideographic/Phonetic group")
        return groups
    if isinstance(value, str):
        parts = value.split("=")
        if len(parts) > 3:
            raise ConversionError("person name has more than three component groups")
        return {k: p for k, p in zip(_REPRESENTATION, parts, strict=False) if p}
    raise ConversionError(f"a {type(value).__name__} is not a person name")


def _components(group: str) -> tuple[str, str, str, str, str]:
    components = [c.strip() for c in group.split("^")]
    if len(components) > 5:
        raise ConversionError("person name group has more than five components")
    family, given, middle, prefix, suffix = (components + [""] * 5)[:5]
    return family, given, middle, prefix, suffix


def _display(group: str) -> str:
    """`Rev. John Robert Quincy Adams B.A. M.Div.`: the name as it is read out."""
    family, given, middle, prefix, suffix = _components(group)
    return " ".join(p for p in (prefix, given, middle, family, suffix) if p)


def _human_name(group: str, representation: str | None) -> dict[str, Any] | None:
    """One PN group -> HumanName (PS3.5 6.2): given and middle names, prefixes and suffixes
    are space-separated lists, so each becomes its own item (`Patient?given=Robert`)."""
    family, given, middle, prefix, suffix = _components(group)
    name: dict[str, Any] = {}
    if representation:
        name["extension"] = [{"url": EN_REPRESENTATION, "valueCode": representation}]
    name["use"] = "official"
    text = _display(group)
    if text:
        name["text"] = text
    if family:
        name["family"] = family
    for key, parts in (("given", f"{given} {middle}"), ("prefix", prefix), ("suffix", suffix)):
        if parts.split():
            name[key] = parts.split()
    return name if text else None


@converter("pn_to_humannames")
def pn_to_humannames(value: Any, ctx: ConvertContext) -> list[dict[str, Any]]:
    """One HumanName per PN group; ideographic/phonetic marked with EN-representation."""
    names = []
    for key, group in _pn_groups(value).items():
        name = _human_name(group, _REPRESENTATION[key])
        if name:
            names.append(name)
    return names


@converter("pn_to_text")
def pn_to_text(value: Any, ctx: ConvertContext) -> str | None:
    """A display form (`Dr. Jane Q Smith`) of the first non-empty PN group."""
    for group in _pn_groups(value).values():
        text = _display(group)
        if text:
            return text
    return None


# Dates and times live in their own module; they are called by the same names.
da_to_date = converter("da_to_date")(dates.da_to_date)
date_time_to_datetime = converter("date_time_to_datetime")(dates.date_time_to_datetime)
dt_to_datetime = converter("dt_to_datetime")(dates.dt_to_datetime)


def get_converter(name: str) -> Converter | None:
    return CONVERTERS.get(name)
