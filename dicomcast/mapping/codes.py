"""Converters for coded values: issuers of identifiers, code sequence items, modalities.

What goes under a standard code system must exist there: DICOM codes are checked against
PS3.16 (the `dcm` table), SNOMED CT identifiers by their form and check digit, and retired
SNOMED RT codes (designator `SRT`) are translated to SNOMED CT by the `srt_to_sct` table.
A code that fails keeps its meaning as text; the coding itself is dropped with a warning.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from dicomcast.errors import MappingError
from dicomcast.mapping.context import ConversionError, ConvertContext, converter
from dicomcast.studyview import DicomJson, text_value

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
SCT_SYSTEM = "http://snomed.info/sct"

_ISSUER_LOCAL = "00400031"  # LocalNamespaceEntityID
_ISSUER_UNIVERSAL = "00400032"  # UniversalEntityID
_ISSUER_TYPE = "00400033"  # UniversalEntityIDType
CODE_VALUE, LONG_CODE_VALUE, URN_CODE_VALUE = "00080100", "00080119", "00080120"
SCHEME, MEANING = "00080102", "00080104"  # CodingSchemeDesignator, CodeMeaning
_CODE_TAGS = (CODE_VALUE, LONG_CODE_VALUE, URN_CODE_VALUE, SCHEME, MEANING)
# Tags converters read inside the items they are given; a source may drop every other tag
# the mappings do not name (see Mappings.tags_read). Keep this in step with the code below.
TAGS_READ = frozenset({_ISSUER_LOCAL, _ISSUER_UNIVERSAL, _ISSUER_TYPE, *_CODE_TAGS})

_OID = re.compile(r"^[0-2](\.(0|[1-9][0-9]*))+$")
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")
# FHIR `code`: no leading/trailing whitespace, single spaces inside.
_FHIR_CODE = re.compile(r"^[^\s]+( [^\s]+)*$")
_MAX_ISSUER = 64  # characters of an issuer name quoted in a reason


class UnknownIssuer(MappingError):
    """The data names an issuer of the patient ID that no setting places: writing it under
    the default system could merge two hospitals' patients, so the study waits."""

    PREFIX = "unknown issuer of patient ID "

    def __init__(self, issuer: str) -> None:
        super().__init__(f"{self.PREFIX}{issuer!r}: map it in DICOMCAST_ISSUER_SYSTEMS")
        self.issuer = issuer

    @classmethod
    def issuer_in(cls, reason: str) -> str | None:
        """The issuer a recorded reason of this kind names (for `failures list`)."""
        if not reason.startswith(cls.PREFIX):
            return None
        quoted = reason[len(cls.PREFIX) :].split(": map it", 1)[0]
        return quoted[1:-1] if len(quoted) >= 2 else None


# --- issuers ---------------------------------------------------------------------------


def _universal_to_system(universal: str, kind: str | None) -> str:
    """A UniversalEntityID of a given type -> a valid URI; `ConversionError` otherwise."""
    kind = (kind or "").upper()
    if kind == "UUID" or (not kind and universal.startswith("{")):
        text = universal.strip("{}")  # the registry form `{...}` of a UUID: same UUID
        try:
            parsed = uuid.UUID(text)
        except ValueError:
            raise ConversionError("issuer is not a valid UUID") from None
        if str(parsed) != text.lower():
            raise ConversionError("issuer is not a UUID in its 8-4-4-4-12 form")
        return f"urn:uuid:{parsed}"
    if kind == "ISO" or (not kind and _OID.match(universal)):
        if len(universal) > 64 or not _OID.match(universal):
            raise ConversionError("issuer is not a valid ISO OID (digits, dots, no leading zeros)")
        return f"urn:oid:{universal}"
    if kind in ("URI", "URL", "") and _URI_SCHEME.match(universal):
        return universal
    raise ConversionError(f"issuer of type {kind or 'unknown'} cannot become a URI")


def _derived(local: str, ctx: ConvertContext) -> str | None:
    base = ctx.config.get("issuer_system_base")
    return f"{base}{quote(local, safe='')}" if base else None


@dataclass(frozen=True)
class _Placed:
    """Where an issuer led: a system, or the issuer named but not placed (`unplaced`),
    `invalid` when it was a malformed universal ID (already warned about)."""

    system: str | None = None
    unplaced: str | None = None
    invalid: bool = False


def _place(value: Any, ctx: ConvertContext) -> _Placed:
    local: str | None
    if isinstance(value, Mapping):
        universal = text_value(value, _ISSUER_UNIVERSAL)
        local = text_value(value, _ISSUER_LOCAL)
        if universal:
            try:
                return _Placed(_universal_to_system(universal, text_value(value, _ISSUER_TYPE)))
            except ConversionError as exc:
                ctx.warnings.append(f"issuer dropped: {exc}")
                if not local:
                    return _Placed(unplaced=universal, invalid=True)
    else:
        local = str(value).strip() if value is not None else None
    if not local:
        return _Placed()
    systems = ctx.config.get("issuer_systems") or {}
    if local in systems:
        return _Placed(str(systems[local]))
    derived = _derived(local, ctx) if ctx.config.get("unknown_issuer") == "derive" else None
    return _Placed(derived) if derived else _Placed(unplaced=local)


@converter("issuer_system")
def issuer_system(value: Any, ctx: ConvertContext) -> str | None:
    """An issuer (a HL7 v2 HD item of a DICOM sequence, or a local name) -> system URI.

    Universal IDs become `urn:oid:` / `urn:uuid:` URIs once checked; local names go through
    the `issuer_systems` setting. An issuer we cannot place gives None, never a guess.
    """
    placed = _place(value, ctx)
    if placed.unplaced and not placed.invalid:
        shown = placed.unplaced[:_MAX_ISSUER]
        ctx.warnings.append(f"issuer {shown!r} is not in DICOMCAST_ISSUER_SYSTEMS")
    return placed.system


@converter("patient_issuer_system")
def patient_issuer_system(value: Any, ctx: ConvertContext) -> str | None:
    """`issuer_system` for the patient ID that finds the Patient: an issuer it cannot place
    parks the study (`unknown_issuer: park`, the default) unless the setting says to fall
    back to the default system (`default-system`) or derive one (`derive`)."""
    placed = _place(value, ctx)
    if not placed.unplaced:
        return placed.system
    shown = placed.unplaced[:_MAX_ISSUER]
    if ctx.config.get("unknown_issuer", "park") == "park":
        raise UnknownIssuer(shown)
    ctx.warnings.append(
        f"issuer {shown!r} is not in DICOMCAST_ISSUER_SYSTEMS: the default patient ID system "
        "is used (DICOMCAST_UNKNOWN_ISSUER=default-system)"
    )
    return None


# --- code sequence items -----------------------------------------------------------------


_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def _verhoeff_ok(digits: str) -> bool:
    """The Verhoeff check digit every SNOMED CT identifier ends with."""
    check = 0
    for position, digit in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(digit)]]
    return check == 0


def is_sctid(code: str) -> bool:
    """A SNOMED CT identifier's form: 6-18 digits, no leading zero, a concept/description/
    relationship partition, and a valid Verhoeff check digit."""
    return (
        6 <= len(code) <= 18
        and code.isascii()
        and code.isdigit()
        and code[0] != "0"
        and code[-2] in "012"
        and _verhoeff_ok(code)
    )


def _standard_coding(
    code: str, system: str, designator: str, meaning: str | None, ctx: ConvertContext
) -> dict[str, Any]:
    """The Coding for a code under its scheme, once the scheme's own rules hold."""
    if designator == "SRT" or (system == SCT_SYSTEM and not is_sctid(code)):
        translated = ctx.table("srt_to_sct").get(code)
        if not translated:
            raise ConversionError(
                f"{designator} code is not a SNOMED CT identifier and has no SNOMED CT "
                "equivalent in PS3.16"
            )
        return {"system": SCT_SYSTEM, "code": str(translated), "display": meaning}
    if system == SCT_SYSTEM:
        return {"system": SCT_SYSTEM, "code": code, "display": meaning}
    if designator == "DCM" or system == DCM_SYSTEM:
        known = ctx.table("dcm").get(code)
        if not known:
            raise ConversionError("DCM code is not in PS3.16 (table dcm)")
        return {"system": DCM_SYSTEM, "code": code, "display": str(known)}
    return {"system": system, "code": code, "display": meaning}


def code_value(item: DicomJson) -> str | None:
    """A code item's value, in whichever of its three forms it is given."""
    return (
        text_value(item, CODE_VALUE)
        or text_value(item, LONG_CODE_VALUE)
        or text_value(item, URN_CODE_VALUE)
    )


def _item_coding(value: Any, ctx: ConvertContext) -> tuple[dict[str, Any] | None, str | None]:
    """(Coding or None, CodeMeaning) of a code sequence item; a coding that cannot be written
    as its scheme says is None with a warning, and its meaning is kept for a text."""
    if not isinstance(value, Mapping):
        raise ConversionError("expected a code sequence item")
    code = code_value(value)
    designator = text_value(value, SCHEME)
    meaning = text_value(value, MEANING)
    if not code:
        raise ConversionError("code sequence item has no CodeValue")
    if not _FHIR_CODE.match(code):
        ctx.warnings.append("coding dropped: its code value has leading, trailing or double spaces")
        return None, meaning
    if not designator:
        return {k: v for k, v in {"code": code, "display": meaning}.items() if v}, meaning
    row = ctx.table("coding_schemes").get(designator)
    system = row.get("system") if isinstance(row, Mapping) else row
    if not system:
        ctx.warnings.append(
            f"coding dropped: designator {designator!r} is not in tables/coding_schemes.csv"
        )
        return None, meaning
    try:
        coding = _standard_coding(code, str(system), designator, meaning, ctx)
    except ConversionError as exc:
        ctx.warnings.append(f"coding dropped: {exc}")
        return None, meaning
    return {k: v for k, v in coding.items() if v}, meaning


@converter("code_item_to_coding")
def code_item_to_coding(value: Any, ctx: ConvertContext) -> dict[str, Any] | None:
    """A DICOM code sequence item -> Coding, the designator turned into a URI by table."""
    return _item_coding(value, ctx)[0]


@converter("code_item_to_concept")
def code_item_to_concept(value: Any, ctx: ConvertContext) -> dict[str, Any] | None:
    """A code sequence item -> CodeableConcept; a dropped coding leaves the meaning as text."""
    coding, meaning = _item_coding(value, ctx)
    concept: dict[str, Any] = {"coding": [coding]} if coding else {}
    text = meaning or (coding or {}).get("display")
    if text:
        concept["text"] = text
    return concept or None


# --- modalities --------------------------------------------------------------------------


def _modality_coding(value: Any, ctx: ConvertContext) -> dict[str, Any]:
    code = str(value).strip().upper()
    if not re.fullmatch(r"[A-Z0-9_]{1,16}", code):
        raise ConversionError("value is not a modality code (CS, up to 16 A-Z 0-9 _)")
    row = ctx.table("modalities").get(code)
    if isinstance(row, Mapping):
        return {"system": DCM_SYSTEM, "code": code, "display": str(row.get("display") or code)}
    ctx.warnings.append(f"modality {code!r} is not a DICOM modality: kept as text only")
    return {"display": code}


@converter("modality_coding")
def modality_coding(value: Any, ctx: ConvertContext) -> dict[str, Any]:
    """CS -> DCM Coding; a value that is no DICOM modality keeps only its text (display)."""
    return _modality_coding(value, ctx)


@converter("acquisition_modality_coding")
def acquisition_modality_coding(value: Any, ctx: ConvertContext) -> dict[str, Any] | None:
    """Like modality_coding, but None for non-acquisition modalities (SR, KO, PR, ...) and
    for values that are no DICOM modality: ImagingStudy.modality is bound to CID 29."""
    code = str(value).strip().upper()
    row = ctx.table("modalities").get(code)
    if not isinstance(row, Mapping) or str(row.get("acquisition", "")).lower() != "yes":
        return None
    return _modality_coding(code, ctx)
