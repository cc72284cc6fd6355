"""What dicomcast asks a PACS with C-FIND, and how the answers become DICOM JSON.

Query keys are only ever UIDs (single-value UID matching) and date ranges dicomcast writes
itself: no value from the data goes into a key, so `*` or `?` in a PatientID can never
widen a query. A study is read level by level (STUDY, SERIES, then IMAGE per series), each
level asked only for attributes of that level or below that the mappings read, so strict
hierarchical PACSes answer too; the levels' answers are merged into one dataset per
instance, the form every other source gives.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomcast.sources.windows import STUDY_DATE as STUDY_DATE
from dicomcast.sources.windows import key_parts as key_parts
from dicomcast.sources.windows import study_key as study_key

# Attributes of the patient and study levels (PS3.4 C.6.2.1, Study Root), and of the series
# level, that a mapping may read; everything else the mappings read is asked at IMAGE level.
PATIENT_STUDY = {
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "AccessionNumber", "IssuerOfAccessionNumberSequence", "StudyID",
    "StudyDescription", "ReferringPhysicianName", "NameOfPhysiciansReadingStudy",
    "ModalitiesInStudy", "ProcedureCodeSequence", "TimezoneOffsetFromUTC",
    "ReasonForRequestedProcedureCodeSequence", "ReasonForTheRequestedProcedure",
}  # fmt: skip
SERIES = {
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate",
    "SeriesTime", "BodyPartExamined", "Laterality", "PerformingPhysicianName",
    "OperatorsName", "InstitutionName", "StationName", "ManufacturerModelName",
}  # fmt: skip
IDENTITY = ("PatientID", "IssuerOfPatientID", "PatientName")
NOT_KEYS = {"QueryRetrieveLevel", "RetrieveAETitle", "InstanceAvailability", "SpecificCharacterSet"}


def _keyword(tag: str) -> str | None:
    try:
        return keyword_for_tag(int(tag, 16)) or None
    except ValueError:
        return None


def _empty(ds: Dataset, keywords: Iterable[str]) -> Dataset:
    for keyword in sorted(keywords):
        try:
            vr = dictionary_VR(keyword)
        except KeyError:
            continue
        setattr(ds, keyword, Sequence([]) if vr == "SQ" else None)
    return ds


class Keys:
    """The return keys of each level, from the tags the compiled mappings read, less those
    they read only inside items (never keys of their own)."""

    def __init__(self, tags: frozenset[str] | None, inside: frozenset[str] = frozenset()) -> None:
        keywords = {k for t in (tags or ()) if t not in inside and (k := _keyword(t))}
        keywords |= {"SOPInstanceUID", "SOPClassUID", "InstanceNumber", "SeriesInstanceUID"}
        keywords -= NOT_KEYS
        self.study_keys = (keywords & PATIENT_STUDY) | {"StudyInstanceUID", "PatientID"}
        self.series_keys = (keywords & SERIES) | {"SeriesInstanceUID", "Modality", "SeriesNumber"}
        self.image_keys = (keywords - PATIENT_STUDY - SERIES) | {"SOPInstanceUID", "SOPClassUID"}
        asked = self.study_keys | self.series_keys | self.image_keys
        # The tags the PACS answers for (an absent one is empty there): a pushed header's
        # value of them never counts.
        self.asked = frozenset(f"{tag:08X}" for k in asked if (tag := tag_for_keyword(k)))

    def window(self, start: dt.date, end: dt.date) -> Dataset:
        """Every study whose StudyDate is in [start, end], with its counts."""
        ds = _empty(Dataset(), ())
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyDate = f"{start:%Y%m%d}-{end:%Y%m%d}"
        ds.StudyInstanceUID = None
        ds.NumberOfStudyRelatedInstances = None
        for keyword in IDENTITY:  # a patient corrected in place keeps the count (PATIENT)
            setattr(ds, keyword, None)
        return ds

    def study(self, uid: str) -> Dataset:
        ds = _empty(Dataset(), self.study_keys | {"StudyDate", "NumberOfStudyRelatedInstances"})
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = uid
        return ds

    def series(self, uid: str) -> Dataset:
        ds = _empty(Dataset(), self.series_keys)
        ds.QueryRetrieveLevel = "SERIES"
        ds.StudyInstanceUID = uid
        return ds

    def images(self, uid: str, series_uid: str) -> Dataset:
        ds = _empty(Dataset(), self.image_keys)
        ds.QueryRetrieveLevel = "IMAGE"
        ds.StudyInstanceUID = uid
        ds.SeriesInstanceUID = series_uid
        return ds


def as_json(ds: Dataset) -> dict[str, Any]:
    """A C-FIND answer as DICOM JSON, without the query's own bookkeeping and empty values.

    Element by element: a value pydicom cannot convert (an IS of `1A`, a DS of `abc`) is
    kept as the text the PACS sent, as a DICOMweb server would pass it on, instead of
    failing the whole answer; the mappings judge it like any source's odd value."""
    out: dict[str, Any] = {}
    tags = list(ds.keys())  # iterating a Dataset converts every element, bad ones too
    for tag in tags:
        key = f"{int(tag):08X}"
        element: dict[str, Any] | None
        try:
            element = ds[tag].to_json_dict(None, 2**31)
        except (ValueError, TypeError, OverflowError):
            element = _as_text(ds, tag)
        keyword = _keyword(key)
        if keyword in NOT_KEYS or not isinstance(element, dict) or not element.get("Value"):
            continue
        out[key] = element
    return out


def _as_text(ds: Dataset, tag: Any) -> dict[str, Any] | None:
    """An element pydicom could not convert, as the text that came over the wire."""
    raw = ds.get_item(tag)
    value = getattr(raw, "value", None)
    vr = str(getattr(raw, "VR", None) or "UN")
    if vr == "SQ" or value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    values = [str(v) for v in value] if isinstance(value, list) else str(value).split("\\")
    texts = [t for v in values if (t := v.strip(" \x00"))]
    return {"vr": vr, "Value": texts} if texts else None


def merged(*levels: dict[str, Any]) -> dict[str, Any]:
    """One instance's dataset from its levels' answers; a lower level's value wins."""
    out: dict[str, Any] = {}
    for level in levels:
        out.update(level)
    return out
