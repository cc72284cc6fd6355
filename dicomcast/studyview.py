"""The normalized study the mappings read: patient + study + series + instances.

Instances are kept as DICOM JSON objects (PS3.18 F.2), the form DICOMweb servers return and
pydicom writes, so a study read from a server and one read from files look the same. Series
and instances are sorted (number, then UID) so that the same study always maps to the same
FHIR resources, which is what makes no-op detection and replays work.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from pydicom.datadict import keyword_for_tag, tag_for_keyword

DicomJson = Mapping[str, Any]

STUDY_UID = "0020000D"
SERIES_UID = "0020000E"
SOP_UID = "00080018"
SERIES_NUMBER = "00200011"
INSTANCE_NUMBER = "00200013"
MODALITY = "00080060"
PATIENT_ID = "00100020"
SOP_CLASS = "00080016"
CONTENT_SEQUENCE = "0040A730"
# What building a study view (and telling two patients' studies apart) reads; the IOCM
# tags (rejection notes) are added below.
_VIEW_TAGS = frozenset(
    {STUDY_UID, SERIES_UID, SOP_UID, SERIES_NUMBER, INSTANCE_NUMBER, MODALITY, PATIENT_ID}
)


class DatasetFilter:
    """Keeps, of every dataset, only the tags in `keep`: as a `json.loads` object hook it
    drops them while parsing (a large study's metadata then never sits whole in memory);
    `tree` does the same to an answer already decoded (a fast decoder has no hook). An
    instance keeps its SR content tree (ContentSequence) only when its SOP class is in
    `content_of` (the dose reports a mapping reads), so no other instance pays for it."""

    def __init__(self, keep: frozenset[str], content_of: frozenset[str] = frozenset()) -> None:
        self.keep = keep
        self.content_of = content_of

    def __call__(self, obj: dict[str, Any]) -> dict[str, Any]:
        # Elements ({"vr": ...}) and person names ({"Alphabetic": ...}) pass untouched; a
        # dataset's keys are tags, all eight hex digits.
        if "vr" in obj or not _is_tag(next(iter(obj), "")):
            return obj
        keep = self.keep
        kept = {tag: element for tag, element in obj.items() if tag in keep}
        # An instance (it has a SOP class, a content item has not) keeps its tree only when
        # a mapping reads reports of its class.
        if (
            CONTENT_SEQUENCE in kept
            and SOP_CLASS in kept
            and text_value(kept, SOP_CLASS) not in self.content_of
        ):
            del kept[CONTENT_SEQUENCE]
        return kept

    def tree(self, value: Any) -> Any:
        """`value` filtered as the hook filters while parsing; only sequences that are kept
        are walked (datasets sit in SQ elements only)."""
        if isinstance(value, list):
            return [self.tree(item) for item in value]
        if not isinstance(value, dict) or "vr" in value:
            return value
        kept = self(value)
        for element in kept.values():
            if isinstance(element, dict) and element.get("vr") == "SQ":
                items = element.get("Value")
                if isinstance(items, list):
                    element["Value"] = [self.tree(item) for item in items]
        return kept


def dataset_filter(keep: frozenset[str], content_of: frozenset[str] = frozenset()) -> DatasetFilter:
    """The filter of datasets that keeps only `keep` (see `DatasetFilter`)."""
    return DatasetFilter(keep, content_of)


def _is_tag(key: str) -> bool:
    return len(key) == 8 and all(c in "0123456789ABCDEFabcdef" for c in key)


def is_dataset(value: object) -> bool:
    """A DICOM JSON dataset (keys are tags), not an element or a person name object."""
    return isinstance(value, Mapping) and bool(value) and _is_tag(str(next(iter(value))))


@lru_cache(maxsize=4096)
def tag_of(name: str) -> str:
    """`StudyDate` or `00080020` or `(0008,0020)` -> `00080020`; ValueError when unknown."""
    cleaned = name.strip().replace("(", "").replace(")", "").replace(",", "").replace(" ", "")
    if len(cleaned) == 8 and all(c in "0123456789abcdefABCDEF" for c in cleaned):
        return cleaned.upper()
    tag = tag_for_keyword(name.strip())
    if tag is None:
        raise ValueError(f"unknown DICOM keyword {name!r}")
    return f"{tag:08X}"


def describe_tag(tag: str) -> str:
    """`00080020` -> `StudyDate (0008,0020)` for messages operators read."""
    keyword = keyword_for_tag(int(tag, 16)) or "unknown"
    return f"{keyword} ({tag[:4]},{tag[4:]})"


def values(data: DicomJson, tag: str) -> list[Any]:
    """The `Value` list of an element; [] when absent, empty, or not shaped as DICOM JSON."""
    element = data.get(tag)
    if element.__class__ is not dict and not isinstance(element, Mapping):  # dict: fast
        return []
    found = element.get("Value")
    return found if found.__class__ is list or isinstance(found, list) else []


def first_value(data: DicomJson, tag: str) -> Any:
    found = values(data, tag)
    return found[0] if found else None


_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def is_uid(value: object) -> bool:
    """A DICOM UID as PS3.5 says (digits and dots, no leading zeros, at most 64 chars):
    the only form that may go into a URL path."""
    return isinstance(value, str) and len(value) <= 64 and _UID.fullmatch(value) is not None


def text_value(data: DicomJson, tag: str) -> str | None:
    value = first_value(data, tag)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def whole_text(data: DicomJson, tag: str) -> str | None:
    """Every value of a text element, joined by backslashes as DICOM writes them (what
    Orthanc's REST API shows): `A\\B` stays `A\\B`, where `text_value` gives `A`."""
    element = data.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list) or not values:
        return None
    text = "\\".join(str(v).strip() for v in values)
    return text or None


def _number(data: DicomJson, tag: str) -> float:
    value = first_value(data, tag)
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")


@dataclass(frozen=True)
class InstanceView:
    uid: str
    data: DicomJson


@dataclass(frozen=True)
class SeriesView:
    uid: str
    instances: tuple[InstanceView, ...]

    @property
    def data(self) -> DicomJson:
        """Series-level attributes: those of the series' first instance."""
        return self.instances[0].data

    @property
    def modality(self) -> str | None:
        return text_value(self.data, MODALITY)


@dataclass(frozen=True)
class StudyView:
    """One study as it is now on the source. `warnings` lists what was dropped while reading."""

    uid: str
    series: tuple[SeriesView, ...]
    warnings: tuple[str, ...] = field(default=())
    # Instances the source holds but the study does not list (IOCM rejection notes and
    # what they reject): the source's own count of the study is instance_count + hidden.
    hidden: int = 0

    @property
    def data(self) -> DicomJson:
        """Patient- and study-level attributes: those of the first instance."""
        return self.series[0].instances[0].data

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)

    @property
    def series_modalities(self) -> list[str]:
        """Distinct series modalities in series order: what the study holds, whatever its
        instances' ModalitiesInStudy says."""
        seen: dict[str, None] = {}
        for series in self.series:
            if series.modality:
                seen.setdefault(series.modality.strip().upper(), None)
        return list(seen)


# --- IOCM rejection notes (IHE RAD IOCM) --------------------------------------------------

KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
CONCEPT_NAME = "0040A043"  # ConceptNameCodeSequence: the document title
EVIDENCE = "0040A375"  # CurrentRequestedProcedureEvidenceSequence
REFERENCED_SERIES = "00081115"
REFERENCED_SOPS = "00081199"
REFERENCED_SOP_UID = "00081155"
CODE_VALUE, CODE_SCHEME = "00080100", "00080102"
# The KOS titles that withdraw what they reference (PS3.16 CID 7011); other titles
# (113000 Of Interest, ...) hide nothing.
REJECTION_TITLES = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}
# Of those, the ones read inside items (a rejection note's references and title codes).
ITEM_TAGS = frozenset(
    {REFERENCED_SERIES, REFERENCED_SOPS, REFERENCED_SOP_UID, CODE_VALUE, CODE_SCHEME}
)
VIEW_TAGS = _VIEW_TAGS | {SOP_CLASS, CONCEPT_NAME, EVIDENCE} | ITEM_TAGS


def rejection_title(data: DicomJson) -> str | None:
    """The rejection code of a rejection note (a KOS titled by CID 7011), else None."""
    if text_value(data, SOP_CLASS) != KOS_SOP_CLASS:
        return None
    title = first_value(data, CONCEPT_NAME)
    if not isinstance(title, Mapping) or text_value(title, CODE_SCHEME) != "DCM":
        return None
    code = text_value(title, CODE_VALUE)
    return code if code in REJECTION_TITLES else None


def _rejected_by(note: DicomJson, study_uid: str) -> set[tuple[str, str]]:
    """(series UID, SOP instance UID) of every instance of this study the note references."""
    found: set[tuple[str, str]] = set()
    for study in values(note, EVIDENCE):
        if not isinstance(study, Mapping) or text_value(study, STUDY_UID) not in (study_uid, None):
            continue
        for series in values(study, REFERENCED_SERIES):
            series_uid = text_value(series, SERIES_UID) if isinstance(series, Mapping) else None
            if not series_uid:
                continue
            for sop in values(series, REFERENCED_SOPS):
                sop_uid = text_value(sop, REFERENCED_SOP_UID) if isinstance(sop, Mapping) else None
                if sop_uid:
                    found.add((series_uid, sop_uid))
    return found


def _apply_rejections(
    study_uid: str, series_map: dict[str, dict[str, DicomJson]], notes: list[str]
) -> int:
    """Remove, in place, the rejection notes of a study and the instances they reject;
    return how many instances were hidden (the source still counts them)."""
    rejecting = [
        (series_uid, sop_uid, code)
        for series_uid, instances in series_map.items()
        for sop_uid, data in instances.items()
        if (code := rejection_title(data))
    ]
    if not rejecting:
        return 0
    hidden: set[tuple[str, str]] = {(s, i) for s, i, _ in rejecting}
    for series_uid, sop_uid, _ in rejecting:
        hidden |= _rejected_by(series_map[series_uid][sop_uid], study_uid)
    count = 0
    for series_uid, sop_uid in hidden:
        if series_map.get(series_uid, {}).pop(sop_uid, None) is not None:
            count += 1
    for series_uid in [s for s, instances in series_map.items() if not instances]:
        del series_map[series_uid]
    reasons = ", ".join(sorted({REJECTION_TITLES[c] for _, _, c in rejecting}))
    notes.append(
        f"IOCM: {count - len(rejecting)} instances withdrawn by {len(rejecting)} rejection "
        f"note(s) ({reasons}) are not listed"
    )
    return count


def build_study_views(instances: Iterable[DicomJson]) -> tuple[list[StudyView], list[str]]:
    """Group instances into studies; drop (with a reason) what cannot belong to any series.

    Returns the studies and warnings about instances that belong to no study at all.
    """
    by_study: dict[str, dict[str, dict[str, DicomJson]]] = {}
    study_warnings: dict[str, list[str]] = {}
    orphans: list[str] = []
    for data in instances:
        if not isinstance(data, Mapping):
            orphans.append("an instance is not a DICOM JSON object; skipped")
            continue
        study_uid = text_value(data, STUDY_UID)
        if not study_uid:
            orphans.append("an instance has no StudyInstanceUID (0020,000D); skipped")
            continue
        notes = study_warnings.setdefault(study_uid, [])
        series_uid = text_value(data, SERIES_UID)
        sop_uid = text_value(data, SOP_UID)
        if not series_uid or not sop_uid:
            missing = "SeriesInstanceUID (0020,000E)" if not series_uid else "SOPInstanceUID"
            notes.append(f"instance without {missing} skipped")
            continue
        series = by_study.setdefault(study_uid, {}).setdefault(series_uid, {})
        if sop_uid in series:
            notes.append(f"duplicate SOPInstanceUID {sop_uid} kept once")
            continue
        series[sop_uid] = data
    studies = []
    for study_uid, series_map in by_study.items():
        hidden = _apply_rejections(study_uid, series_map, study_warnings[study_uid])
        if not series_map:
            continue  # every instance withdrawn: the study is gone
        series_views = []
        for series_uid, inst_map in series_map.items():
            ordered = sorted(
                inst_map.items(), key=lambda kv: (_number(kv[1], INSTANCE_NUMBER), kv[0])
            )
            series_views.append(
                SeriesView(series_uid, tuple(InstanceView(uid, d) for uid, d in ordered))
            )
        series_views.sort(key=lambda s: (_number(s.data, SERIES_NUMBER), s.uid))
        warnings = tuple(study_warnings.get(study_uid, ()))
        studies.append(StudyView(study_uid, tuple(series_views), warnings, hidden))
    # Studies whose every instance was refused never reach a series; report them too.
    for study_uid, notes in study_warnings.items():
        if not by_study.get(study_uid):
            orphans.extend(f"study {study_uid}: {n}" for n in notes)
    return studies, orphans
