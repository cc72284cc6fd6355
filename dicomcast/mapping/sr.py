"""Structured reports: finding content items in an SR's content tree, and reading them.

An SR (a dose report, for one) is a tree of content items (PS3.3 C.17.3): each item names
what it is with a concept name code and holds one typed value (NUM, CODE, DATETIME, TEXT,
UIDREF, PNAME, CONTAINER ...). Vendors nest the same template rows at different depths, so
a mapping finds an item by its concept name anywhere below where it stands, not by a fixed
path. `sr: "DCM:113811 > DCM:113813"` reads "the first 113813 inside the first 113811".

Converters named `sr_*` turn one content item into a FHIR value and check its value type:
an item of the wrong type, a number without UCUM units, a code item without a code costs
that one element and a warning, never the report.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from dicomcast.mapping.codes import (
    CODE_VALUE,
    MEANING,
    SCHEME,
    code_item_to_coding,
    code_item_to_concept,
    code_value,
)
from dicomcast.mapping.context import ConversionError, ConvertContext, converter
from dicomcast.mapping.converters import pn_to_text, to_uid
from dicomcast.mapping.dates import da_to_date, dt_to_datetime
from dicomcast.studyview import DicomJson, first_value, text_value, values

CONTENT = "0040A730"  # ContentSequence
VALUE_TYPE = "0040A040"
CONCEPT_NAME = "0040A043"  # ConceptNameCodeSequence
MEASURED = "0040A300"  # MeasuredValueSequence
NUMERIC = "0040A30A"  # NumericValue
FLOAT = "0040A161"  # FloatingPointValue
UNITS = "004008EA"  # MeasurementUnitsCodeSequence
CONCEPT_CODE = "0040A168"  # ConceptCodeSequence
DATETIME, DATE, TIME = "0040A120", "0040A121", "0040A122"
PERSON = "0040A123"  # PersonName
UID = "0040A124"
TEXT = "0040A160"  # TextValue
TEMPLATE = "0040A504"  # ContentTemplateSequence
# Every tag reading a content tree touches: a source must keep them inside SR instances.
TAGS_READ = frozenset(
    {
        CONTENT,
        VALUE_TYPE,
        CONCEPT_NAME,
        MEASURED,
        NUMERIC,
        FLOAT,
        UNITS,
        CONCEPT_CODE,
        DATETIME,
        DATE,
        TIME,
        PERSON,
        UID,
        TEXT,
        TEMPLATE,
        "0040DB00",  # TemplateIdentifier
        "00080105",  # MappingResource
        "0040A010",  # RelationshipType
    }
)
UCUM = "http://unitsofmeasure.org"
MAX_DEPTH = 64  # deeper trees are not reports but attacks: the rest is not searched
MAX_ITEMS = 200_000  # items visited per search, for the same reason

_CODE = re.compile(r"^\s*([A-Za-z0-9_.-]+):([^\s\[\]=>]+)\s*$")
_STEP = re.compile(r"^\s*([^\[\]]+?)\s*(?:\[\s*([^\]=]+?)\s*=\s*([^\]]+?)\s*\])?\s*$")


@dataclass(frozen=True)
class Concept:
    """A concept name a mapping asks for, with the codes that mean the same: a SNOMED CT
    code also matches the retired SNOMED RT codes PS3.16 maps to it."""

    scheme: str
    code: str
    aliases: frozenset[tuple[str, str]] = frozenset()

    def matches(self, item: DicomJson | None) -> bool:
        if not isinstance(item, Mapping):
            return False
        code = code_value(item)
        scheme = (text_value(item, SCHEME) or "").upper()
        if code is None:
            return False
        return (scheme, code) == (self.scheme, self.code) or (scheme, code) in self.aliases

    def __str__(self) -> str:
        return f"{self.scheme}:{self.code}"


@dataclass(frozen=True)
class Step:
    """One step of a path: an item with this concept name, and optionally with a child item
    `has` whose code value is `equals` (`DCM:113870[DCM:113874=DCM:113850]`)."""

    concept: Concept
    has: Concept | None = None
    equals: Concept | None = None

    def matches(self, item: DicomJson) -> bool:
        if not self.concept.matches(first_value(item, CONCEPT_NAME)):
            return False
        if self.has is None or self.equals is None:
            return True
        return any(
            self.has.matches(first_value(child, CONCEPT_NAME))
            and self.equals.matches(first_value(child, CONCEPT_CODE))
            for child in _children(item)
        )


def parse_concept(text: str, srt_to_sct: Mapping[str, Any]) -> Concept:
    """`SCHEME:CODE` -> Concept; ValueError naming what is wrong."""
    match = _CODE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not SCHEME:CODE (for example DCM:113813)")
    scheme, code = match.group(1).upper(), match.group(2)
    aliases: frozenset[tuple[str, str]] = frozenset()
    if scheme == "SCT":
        aliases = frozenset(("SRT", s) for s, c in srt_to_sct.items() if str(c) == code)
    return Concept(scheme, code, aliases)


def parse_path(spec: Any, srt_to_sct: Mapping[str, Any]) -> tuple[Step, ...]:
    """`"DCM:113811 > DCM:113813"` or a list of steps -> the steps; ValueError when bad."""
    parts = spec if isinstance(spec, list) else str(spec).split(">")
    steps = []
    for part in parts:
        match = _STEP.match(str(part))
        if not match:
            raise ValueError(f"{part!r} is not SCHEME:CODE or SCHEME:CODE[SCHEME:CODE=SCHEME:CODE]")
        concept = parse_concept(match.group(1), srt_to_sct)
        has = parse_concept(match.group(2), srt_to_sct) if match.group(2) else None
        equals = parse_concept(match.group(3), srt_to_sct) if match.group(3) else None
        steps.append(Step(concept, has, equals))
    if not steps:
        raise ValueError("sr: names no concept")
    return tuple(steps)


def _children(item: DicomJson) -> list[DicomJson]:
    return [c for c in values(item, CONTENT) if isinstance(c, Mapping)]


def _below(item: DicomJson) -> Iterator[DicomJson]:
    """Every content item under `item`, depth first in document order (bounded)."""
    stack: list[tuple[int, Iterator[DicomJson]]] = [(1, iter(_children(item)))]
    visited = 0
    while stack:
        depth, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            continue
        visited += 1
        if visited > MAX_ITEMS:
            return
        yield child
        if depth < MAX_DEPTH:
            stack.append((depth + 1, iter(_children(child))))


def find(data: DicomJson, steps: tuple[Step, ...], many: bool) -> list[DicomJson]:
    """The content items at the end of `steps` under `data`: the first one, or with `many`
    every one (below every match of the steps before)."""
    current = [data]
    for step in steps:
        found: dict[int, DicomJson] = {}
        for item in current:
            for candidate in _below(item):
                if step.matches(candidate):
                    found.setdefault(id(candidate), candidate)
                    if not many:
                        break
            if found and not many:
                break
        if not found:
            return []
        current = list(found.values())
    return current


# --- reading one content item ---------------------------------------------------------------


def _item(value: Any, *types: str) -> DicomJson:
    if not isinstance(value, Mapping):
        raise ConversionError("expected an SR content item")
    kind = text_value(value, VALUE_TYPE)
    if kind not in types:
        raise ConversionError(f"content item is {kind or 'untyped'}, expected {'/'.join(types)}")
    return value


def _number(item: DicomJson) -> tuple[int | float, DicomJson]:
    measured = first_value(item, MEASURED)
    if not isinstance(measured, Mapping):
        raise ConversionError("NUM item has no measured value (a qualifier only, or empty)")
    raw = first_value(measured, NUMERIC)
    if raw is None:
        raw = first_value(measured, FLOAT)
    try:
        number = Decimal(str(raw).strip())
    except (InvalidOperation, ValueError):
        raise ConversionError("NUM item's value is not a number") from None
    if not number.is_finite():
        raise ConversionError("NUM item's value is not a finite number")
    value: int | float = int(number) if number == number.to_integral_value() else float(number)
    return value, measured


@converter("sr_quantity")
def sr_quantity(value: Any, ctx: ConvertContext) -> dict[str, Any]:
    """NUM item -> Quantity in UCUM (`unit` and `code` the UCUM code, as the dose IG
    writes them); the number is kept as the report gives it, never rescaled."""
    number, measured = _number(_item(value, "NUM"))
    units = first_value(measured, UNITS)
    if not isinstance(units, Mapping):
        raise ConversionError("NUM item has no measurement units")
    scheme, code = text_value(units, SCHEME), text_value(units, CODE_VALUE)
    if scheme != "UCUM" or not code:
        raise ConversionError(f"NUM item's units are not UCUM (designator {scheme!r})")
    return {"value": number, "unit": code, "system": UCUM, "code": code}


@converter("sr_integer")
def sr_integer(value: Any, ctx: ConvertContext) -> int:
    """NUM item holding a count -> integer."""
    number, _ = _number(_item(value, "NUM"))
    if not isinstance(number, int):
        raise ConversionError("NUM item's value is not a whole number")
    return number


@converter("sr_measurement_text")
def sr_measurement_text(value: Any, ctx: ConvertContext) -> str:
    """NUM item -> `CT Dose Length Product Total = 203.12 mGy.cm` (meaning from PS3.16
    for DCM codes): the readable headline the dose IG puts in valueString."""
    quantity = sr_quantity(value, ctx)
    name = first_value(value, CONCEPT_NAME)
    meaning = text_value(name, MEANING) if isinstance(name, Mapping) else None
    if isinstance(name, Mapping) and text_value(name, SCHEME) == "DCM":
        meaning = str(ctx.table("dcm").get(text_value(name, CODE_VALUE) or "") or meaning)
    return f"{meaning or 'Dose'} = {quantity['value']} {quantity['unit']}"


def _code(value: Any) -> DicomJson:
    code = first_value(_item(value, "CODE"), CONCEPT_CODE)
    if not isinstance(code, Mapping):
        raise ConversionError("CODE item has no concept code")
    return code


@converter("sr_concept")
def sr_concept(value: Any, ctx: ConvertContext) -> dict[str, Any] | None:
    """CODE item -> CodeableConcept (the same checks as code_item_to_concept)."""
    concept: dict[str, Any] | None = code_item_to_concept(_code(value), ctx)
    return concept


@converter("sr_coding")
def sr_coding(value: Any, ctx: ConvertContext) -> dict[str, Any] | None:
    """CODE item -> Coding."""
    coding: dict[str, Any] | None = code_item_to_coding(_code(value), ctx)
    return coding


@converter("sr_datetime")
def sr_datetime(value: Any, ctx: ConvertContext) -> str | None:
    """DATETIME (or DATE) item -> FHIR dateTime, its zone as the converters for tags."""
    item = _item(value, "DATETIME", "DATE")
    if text_value(item, VALUE_TYPE) == "DATE":
        return da_to_date(first_value(item, DATE), ctx)
    raw = first_value(item, DATETIME)
    if raw is None:
        raise ConversionError("DATETIME item has no value")
    return dt_to_datetime(raw, ctx)


@converter("sr_text")
def sr_text(value: Any, ctx: ConvertContext) -> str | None:
    """TEXT item -> its text."""
    text = first_value(_item(value, "TEXT"), TEXT)
    if text is None:
        return None
    return str(text).strip() or None


@converter("sr_uid")
def sr_uid(value: Any, ctx: ConvertContext) -> str:
    """UIDREF item -> the UID, checked."""
    uid: str = to_uid(first_value(_item(value, "UIDREF"), UID), ctx)
    return uid


@converter("sr_person")
def sr_person(value: Any, ctx: ConvertContext) -> str | None:
    """PNAME item -> display text of the name."""
    name = first_value(_item(value, "PNAME"), PERSON)
    return pn_to_text(name, ctx) if name is not None else None
