"""AWS HealthImaging image set metadata, turned into the DICOM JSON the mappings read.

`GetImageSetMetadata` answers gzipped JSON keyed by keyword and level:
`Patient.DICOM`, `Study.DICOM`, `Study.Series.<uid>.DICOM` and
`Study.Series.<uid>.Instances.<uid>.DICOM`, each a map of keyword to value. An instance's
dataset is the four levels together. What the keyword form loses, and how it comes back:
- **VR**: from the DICOM dictionary by keyword, or the instance's `DICOMVRs` map where
  HealthImaging gives one (private and ambiguous elements); an element with neither is
  kept as `UN`.
- **Numbers**: IS and DS arrive as the strings in the file, padded (`"1 "`); they become
  JSON numbers, as a DICOMweb server gives them. US, SS, UL, SL, FL and FD arrive as
  numbers already. A value that is not a number is kept as text.
- **Person names** arrive as plain strings, `Family^Given`, with `=` between the
  alphabetic, ideographic and phonetic groups; they become `{"Alphabetic": …}` objects.
- **Empty values** arrive as null: the element is present without a value.
- **Binary values** (OB, OW, UN …) arrive as base64 text; they become `InlineBinary`.
- **Private elements** arrive keyed by their tag (`"00091001"`), with their VR in
  `DICOMVRs`.
- The file meta group (0002) is left out, as DICOMweb leaves it out.
"""

from __future__ import annotations

import re
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

DicomJson = dict[str, Any]
TAG = re.compile(r"[0-9A-Fa-f]{8}")
NUMBERS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV"})
BINARY = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def instances(metadata: dict[str, Any]) -> list[DicomJson]:
    """Every instance of an image set as a DICOM JSON dataset (all four levels in one)."""
    patient = _level(metadata.get("Patient"), {})
    study_level = metadata.get("Study") if isinstance(metadata.get("Study"), dict) else {}
    study = {**patient, **_level(study_level, {})}
    found: list[DicomJson] = []
    series_map = study_level.get("Series") if isinstance(study_level, dict) else None
    for series in (series_map or {}).values():
        if not isinstance(series, dict):
            continue
        series_data = {**study, **_level(series, {})}
        for instance in (series.get("Instances") or {}).values():
            if not isinstance(instance, dict):
                continue
            given = instance.get("DICOMVRs")
            vrs: dict[str, Any] = given if isinstance(given, dict) else {}
            found.append({**series_data, **_level(instance, vrs)})
    return found


def _level(node: Any, vrs: dict[str, Any]) -> DicomJson:
    """The `DICOM` map of one level, as DICOM JSON elements."""
    dicom = node.get("DICOM") if isinstance(node, dict) else None
    return _dataset(dicom, vrs) if isinstance(dicom, dict) else {}


def _dataset(values: dict[str, Any], vrs: dict[str, Any]) -> DicomJson:
    out: DicomJson = {}
    for name, value in values.items():
        tag = _tag(name)
        if tag is None or tag.startswith("0002"):
            continue
        out[tag] = element(_vr(name, tag, vrs), value, vrs)
    return out


def _tag(name: str) -> str | None:
    if TAG.fullmatch(name):
        return name.upper()
    number = tag_for_keyword(name)
    return None if number is None else f"{number:08X}"


def _vr(name: str, tag: str, vrs: dict[str, Any]) -> str:
    given = vrs.get(name) or vrs.get(tag)
    if isinstance(given, str) and len(given) == 2:
        return given
    try:
        vr = str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]  # "US or SS": the first, as most toolkits read it


def element(vr: str, value: Any, vrs: dict[str, Any]) -> dict[str, Any]:
    """One DICOM JSON element from a HealthImaging value."""
    if value is None or value == [] or value == "":
        return {"vr": vr}
    if vr == "SQ":
        items = value if isinstance(value, list) else [value]
        return {"vr": vr, "Value": [_dataset(i, vrs) for i in items if isinstance(i, dict)]}
    if vr in BINARY:
        return {"vr": vr, "InlineBinary": value if isinstance(value, str) else ""}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [_person(v) for v in values]}
    if vr in ("IS", "DS"):
        return {"vr": vr, "Value": [_number(v) for v in values]}
    if vr in NUMBERS:
        return {"vr": vr, "Value": values}
    return {"vr": vr, "Value": [v if isinstance(v, str) else str(v) for v in values]}


def _person(value: Any) -> dict[str, str]:
    groups = str(value).split("=")
    return {kind: text for kind, text in zip(PN_GROUPS, groups, strict=False) if text}


def _number(value: Any) -> Any:
    """An IS or DS string as the JSON number it writes (text when it is not one)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
