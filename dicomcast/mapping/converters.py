"""Named converters the mapping files call with `as:` — where a DICOM value becomes FHIR.

Each takes the value `from:` produced and a `ConvertContext`, returns a FHIR value or None,
and raises `ConversionError` for a malformed value: the engine then drops that one element
and records a warning naming the file, rule and tag.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from dicomcast.mapping import dates
from dicomcast.mapping.context import ConversionError, ConvertContext
from dicomcast.studyview import text_value

__all__ = [
    "ConversionError",
    "ConvertContext",
    "da_to_date",
    "date_time_to_datetime",
    "dt_to_datetime",
    "get_converter",
]

IDENTIFIER_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0203"
DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
EN_REPRESENTATION = "http://hl7.org/fhir/StructureDefinition/iso21090-EN-representation"


Converter = Callable[[Any, ConvertContext], Any]
CONVERTERS: dict[str, Converter] = {}


def converter(name: str) -> Callable[[Converter], Converter]:
    def register(fn: Converter) -> Converter:
        CONVERTERS[name] = fn
        return fn

    return register


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


def _human_name(group: str, representation: str | None) -> dict[str, Any] | None:
    components = [c.strip() for c in group.split("^")]
    if len(components) > 5:
        raise ConversionError("person name group has more than five components")
    family, given, middle, prefix, suffix = (components + [""] * 5)[:5]
    name: dict[str, Any] = {}
    if representation:
        name["extension"] = [{"url": EN_REPRESENTATION, "valueCode": representation}]
    if family:
        name["family"] = family
    givens = [g for g in (given, *middle.split(" ")) if g]
    if givens:
        name["given"] = givens
    if prefix:
        name["prefix"] = [prefix]
    if suffix:
        name["suffix"] = [suffix]
    return name if len(name) > (1 if representation else 0) else None


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
        components = [c.strip() for c in group.split("^")]
        family, given, middle, prefix, suffix = (components + [""] * 5)[:5]
        text = " ".join(p for p in (prefix, given, middle, family, suffix) if p)
        if text:
            return text
    return None


# --- issuers, codes, modalities ------------------------------------------------------------

_ISSUER_LOCAL = "00400031"  # LocalNamespaceEntityID
_ISSUER_UNIVERSAL = "00400032"  # UniversalEntityID
_ISSUER_TYPE = "00400033"  # UniversalEntityIDType
_CODE_TAGS = ("00080100", "00080119", "00080120", "00080102", "00080104")
# Tags converters read inside the items they are given; a source may drop every other tag
# the mappings do not name (see Mappings.tags_read). Keep this in step with the code below.
TAGS_READ = frozenset({_ISSUER_LOCAL, _ISSUER_UNIVERSAL, _ISSUER_TYPE, *_CODE_TAGS})


def _universal_to_system(uid: str, kind: str | None) -> str:
    kind = (kind or "").upper()
    if kind == "ISO":
        return f"urn:oid:{_uid(uid)}"
    if kind == "UUID":
        return f"urn:uuid:{uid.lower()}"
    if kind in ("URI", "URL") or "://" in uid or uid.startswith("urn:"):
        return uid
    if _UID.match(uid):
        return f"urn:oid:{uid}"
    raise ConversionError(f"cannot turn issuer {uid!r} of type {kind or 'unknown'} into a URI")


@converter("issuer_system")
def issuer_system(value: Any, ctx: ConvertContext) -> str | None:
    """An issuer (a HL7 v2 HD item of a DICOM sequence, or a local name) -> system URI.

    Universal IDs become `urn:oid:` / `urn:uuid:` URIs; local names go through the
    `issuer_systems` setting. An issuer we cannot place gives None, never an empty system.
    """
    local: str | None
    if isinstance(value, Mapping):
        universal = text_value(value, _ISSUER_UNIVERSAL)
        if universal:
            return _universal_to_system(universal, text_value(value, _ISSUER_TYPE))
        local = text_value(value, _ISSUER_LOCAL)
    else:
        local = str(value).strip() if value is not None else None
    if not local:
        return None
    systems = ctx.config.get("issuer_systems") or {}
    if local in systems:
        return str(systems[local])
    ctx.warnings.append(f"issuer {local!r} is not in the issuer_systems setting")
    return None


@converter("code_item_to_coding")
def code_item_to_coding(value: Any, ctx: ConvertContext) -> dict[str, Any]:
    """A DICOM code sequence item -> Coding, the designator turned into a URI by table."""
    if not isinstance(value, Mapping):
        raise ConversionError("expected a code sequence item")
    code = (
        text_value(value, "00080100")  # CodeValue
        or text_value(value, "00080119")  # LongCodeValue
        or text_value(value, "00080120")  # URNCodeValue
    )
    designator = text_value(value, "00080102")  # CodingSchemeDesignator
    meaning = text_value(value, "00080104")  # CodeMeaning
    if not code:
        raise ConversionError("code sequence item has no CodeValue")
    system = None
    if designator:
        row = ctx.table("coding_schemes").get(designator)
        system = row.get("system") if isinstance(row, Mapping) else row
        if not system:
            raise ConversionError(
                f"coding scheme designator {designator!r} is not in tables/coding_schemes.csv"
            )
    coding: dict[str, Any] = {"system": system, "code": code, "display": meaning}
    return {k: v for k, v in coding.items() if v}


@converter("code_item_to_concept")
def code_item_to_concept(value: Any, ctx: ConvertContext) -> dict[str, Any]:
    coding = code_item_to_coding(value, ctx)
    concept: dict[str, Any] = {"coding": [coding]}
    if coding.get("display"):
        concept["text"] = coding["display"]
    return concept


def _modality_coding(code: str, ctx: ConvertContext) -> dict[str, Any]:
    code = str(code).strip().upper()
    if not re.fullmatch(r"[A-Z0-9_]{1,16}", code):
        raise ConversionError(f"{code!r} is not a modality code")
    row = ctx.table("modalities").get(code)
    coding = {"system": DCM_SYSTEM, "code": code}
    if isinstance(row, Mapping) and row.get("display"):
        coding["display"] = str(row["display"])
    return coding


@converter("modality_coding")
def modality_coding(value: Any, ctx: ConvertContext) -> dict[str, Any]:
    return _modality_coding(value, ctx)


@converter("acquisition_modality_coding")
def acquisition_modality_coding(value: Any, ctx: ConvertContext) -> dict[str, Any] | None:
    """Like modality_coding, but None for non-acquisition modalities (SR, KO, PR, ...).

    ImagingStudy.modality is bound to DICOM CID 29, acquisition modalities only.
    """
    coding = _modality_coding(value, ctx)
    row = ctx.table("modalities").get(coding["code"])
    if not isinstance(row, Mapping) or str(row.get("acquisition", "")).lower() != "yes":
        return None
    return coding


# Dates and times live in their own module; they are called by the same names.
da_to_date = converter("da_to_date")(dates.da_to_date)
date_time_to_datetime = converter("date_time_to_datetime")(dates.date_time_to_datetime)
dt_to_datetime = converter("dt_to_datetime")(dates.dt_to_datetime)


def get_converter(name: str) -> Converter | None:
    return CONVERTERS.get(name)
