"""Radiation dose structured reports as modalities write them, for the demo, tests and bench.

Three kinds, each the standard's template as a vendor fills it in (PS3.16):
- `ct`: X-Ray Radiation Dose SR, TID 10011 (CT Radiation Dose) with two irradiation events
  (TID 10013), an accumulated DLP (TID 10012) and the irradiation-authorizing person;
- `xray`: X-Ray Radiation Dose SR, TID 10001 (Projection X-Ray) with accumulated doses
  (TID 10002/10004) in the units DICOM uses (Gy, Gy.m2, s);
- `nm`: Radiopharmaceutical Radiation Dose SR, TID 10021 with one administration (TID 10022).
Retired SNOMED RT codes appear where real devices still send them.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, generate_uid

XRAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
RADIOPHARMACEUTICAL_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.68"
_ROOT = "1.2.826.0.1.3680043.8.498."
_IMAGE_ONLY = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PixelData",
    "BodyPartExamined",
    "Laterality",
)


def code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _item(relationship: str, value_type: str, name: Dataset) -> Dataset:
    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([name])
    return item


def container(relationship: str, name: Dataset, *children: Dataset) -> Dataset:
    item = _item(relationship, "CONTAINER", name)
    item.ContinuityOfContent = "SEPARATE"
    item.ContentSequence = Sequence(list(children))
    return item


def num(relationship: str, name: Dataset, value: str, unit: str, *children: Dataset) -> Dataset:
    item = _item(relationship, "NUM", name)
    measured = Dataset()
    measured.NumericValue = str(Decimal(value))
    measured.MeasurementUnitsCodeSequence = Sequence([code(unit, "UCUM", unit)])
    item.MeasuredValueSequence = Sequence([measured])
    if children:
        item.ContentSequence = Sequence(list(children))
    return item


def coded(relationship: str, name: Dataset, value: Dataset, *children: Dataset) -> Dataset:
    item = _item(relationship, "CODE", name)
    item.ConceptCodeSequence = Sequence([value])
    if children:
        item.ContentSequence = Sequence(list(children))
    return item


# Value types held in one attribute: value type -> the attribute's keyword.
_SIMPLE = {"TEXT": "TextValue", "UIDREF": "UID", "DATETIME": "DateTime"}


def simple(value_type: str, relationship: str, name: Dataset, value: str) -> Dataset:
    item = _item(relationship, value_type, name)
    setattr(item, _SIMPLE[value_type], value)
    return item


def text(relationship: str, name: Dataset, value: str) -> Dataset:
    return simple("TEXT", relationship, name, value)


def uidref(relationship: str, name: Dataset, value: str) -> Dataset:
    return simple("UIDREF", relationship, name, value)


def when(relationship: str, name: Dataset, value: str) -> Dataset:
    return simple("DATETIME", relationship, name, value)


def person(relationship: str, name: str, role: Dataset) -> Dataset:
    item = _item(relationship, "PNAME", code("113870", "DCM", "Person Name"))
    item.PersonName = name
    item.ContentSequence = Sequence(
        [coded("HAS PROPERTIES", code("113875", "DCM", "Person Role in Procedure"), role)]
    )
    return item


AUTHORIZING = code("113850", "DCM", "Irradiation Authorizing")


def _observer(seed: str, name: str) -> list[Dataset]:
    """TID 1002/1004: the device that observed (and reports) the irradiation."""
    return [
        coded(
            "HAS OBS CONTEXT",
            code("121005", "DCM", "Observer Type"),
            code("121007", "DCM", "Device"),
        ),
        uidref("HAS OBS CONTEXT", code("121012", "DCM", "Device Observer UID"), _uid(seed, "dev")),
        text("HAS OBS CONTEXT", code("121013", "DCM", "Device Observer Name"), name),
    ]


def _xray_context(seed: str, device: str, procedure: Dataset, start: str) -> list[Dataset]:
    """What an X-Ray Radiation Dose Report opens with: the procedure, the observing device
    and when the irradiation started."""
    return [
        coded("HAS CONCEPT MOD", code("121058", "DCM", "Procedure reported"), procedure),
        *_observer(seed, device),
        when("HAS OBS CONTEXT", code("113809", "DCM", "Start of X-Ray Irradiation"), start),
    ]


def _uid(*parts: str) -> str:
    return str(generate_uid(prefix=_ROOT, entropy_srcs=list(parts)))


def _ct_event(seed: str, n: int, ctdi: str, dlp: str, start: str) -> Dataset:
    return container(
        "CONTAINS",
        code("113819", "DCM", "CT Acquisition"),
        text("CONTAINS", code("125203", "DCM", "Acquisition Protocol"), f"Abdomen {n}"),
        coded(
            "CONTAINS", code("123014", "DCM", "Target Region"), code("818981001", "SCT", "Abdomen")
        ),
        coded(
            "CONTAINS",
            code("113820", "DCM", "CT Acquisition Type"),
            code("116152004", "SCT", "Spiral Acquisition"),
        ),
        uidref(
            "CONTAINS", code("113769", "DCM", "Irradiation Event UID"), _uid(seed, "event", str(n))
        ),
        when("CONTAINS", code("111526", "DCM", "DateTime Started"), start),
        container(
            "CONTAINS",
            code("113829", "DCM", "CT Dose"),
            num("CONTAINS", code("113830", "DCM", "Mean CTDIvol"), ctdi, "mGy"),
            coded(
                "CONTAINS",
                code("113835", "DCM", "CTDIw Phantom Type"),
                code("113691", "DCM", "IEC Body Dosimetry Phantom"),
            ),
            num("CONTAINS", code("113838", "DCM", "DLP"), dlp, "mGy.cm"),
        ),
        person("CONTAINS", "Moore^John", AUTHORIZING),
    )


def ct_content(seed: str, start: str) -> tuple[Dataset, list[Dataset]]:
    """TID 10011: title and content of a CT dose report (events 157.07 + 46.05 mGy.cm)."""
    procedure = code("P5-08000", "SRT", "Computed Tomography X-Ray")
    return code("113701", "DCM", "X-Ray Radiation Dose Report"), [
        *_xray_context(seed, "CT01", procedure, start),
        coded(
            "HAS OBS CONTEXT",
            code("113705", "DCM", "Scope of Accumulation"),
            code("113014", "DCM", "Study"),
        ),
        container(
            "CONTAINS",
            code("113811", "DCM", "CT Accumulated Dose Data"),
            num(
                "CONTAINS",
                code("113812", "DCM", "Total Number of Irradiation Events"),
                "2",
                "{events}",
            ),
            num(
                "CONTAINS",
                code("113813", "DCM", "CT Dose Length Product Total"),
                "203.12",
                "mGy.cm",
            ),
        ),
        _ct_event(seed, 1, "1.25", "157.07", start),
        _ct_event(seed, 2, "2.25", "46.05", start[:-2] + "59"),
        coded(
            "CONTAINS",
            code("113854", "DCM", "Source of Dose Information"),
            code("113856", "DCM", "Automated Data Collection"),
        ),
    ]


def xray_content(seed: str, start: str) -> tuple[Dataset, list[Dataset]]:
    """TID 10001: a projection X-ray (fluoroscopy) dose report, in DICOM's own units."""
    accumulated = container(
        "CONTAINS",
        code("113702", "DCM", "Accumulated X-Ray Dose Data"),
        coded(
            "HAS CONCEPT MOD",
            code("113764", "DCM", "Acquisition Plane"),
            code("113622", "DCM", "Single Plane"),
        ),
        num("CONTAINS", code("113722", "DCM", "Dose Area Product Total"), "0.0013639", "Gy.m2"),
        num("CONTAINS", code("113725", "DCM", "Dose (RP) Total"), "0.212", "Gy"),
        num(
            "CONTAINS",
            code("113726", "DCM", "Fluoro Dose Area Product Total"),
            "0.0004523",
            "Gy.m2",
        ),
        num(
            "CONTAINS",
            code("113727", "DCM", "Acquisition Dose Area Product Total"),
            "0.0009116",
            "Gy.m2",
        ),
        num("CONTAINS", code("113730", "DCM", "Total Fluoro Time"), "450", "s"),
        num("CONTAINS", code("113731", "DCM", "Total Number of Radiographic Frames"), "42", "1"),
    )
    procedure = code("113704", "DCM", "Projection X-Ray")
    return code("113701", "DCM", "X-Ray Radiation Dose Report"), [
        *_xray_context(seed, "XA01", procedure, start),
        accumulated,
    ]


def nm_content(seed: str, start: str) -> tuple[Dataset, list[Dataset]]:
    """TID 10021: one administration of 154 MBq of a radiopharmaceutical, intravenously."""
    agent = coded(
        "CONTAINS",
        code("349358000", "SCT", "Radiopharmaceutical agent"),
        code("429296007", "SCT", "Ioflupane (123-I)"),
        coded(
            "HAS PROPERTIES",
            code("C-10072", "SRT", "Radionuclide"),
            code("C-114A4", "SRT", "^123^Iodine"),
        ),
    )
    return code("113500", "DCM", "Radiopharmaceutical Radiation Dose Report"), [
        container(
            "CONTAINS",
            code("113502", "DCM", "Radiopharmaceutical Administration"),
            agent,
            uidref(
                "CONTAINS",
                code("113503", "DCM", "Radiopharmaceutical Administration Event UID"),
                _uid(seed, "administration"),
            ),
            when("CONTAINS", code("123003", "DCM", "Radiopharmaceutical Start DateTime"), start),
            num("CONTAINS", code("113507", "DCM", "Administered activity"), "154", "MBq"),
            num("CONTAINS", code("123005", "DCM", "Radiopharmaceutical Volume"), "2.5", "cm3"),
            coded(
                "CONTAINS",
                code("410675002", "SCT", "Route of administration"),
                code("47625008", "SCT", "Intravenous route"),
            ),
        ),
    ]


KINDS: dict[str, tuple[str, str, Callable[[str, str], tuple[Dataset, list[Dataset]]]]] = {
    "ct": (XRAY_DOSE_SR, "10011", ct_content),
    "xray": (XRAY_DOSE_SR, "10001", xray_content),
    "nm": (RADIOPHARMACEUTICAL_DOSE_SR, "10021", nm_content),
}


def make_dose_report(base: Dataset, kind: str) -> Dataset:
    """Turn `base` (an instance with the study's patient and study attributes, in its own
    series) into a dose report of `kind` ("ct", "xray" or "nm")."""
    sop_class, template, content = KINDS[kind]
    ds = base
    for name in _IMAGE_ONLY:
        if name in ds:
            delattr(ds, name)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.Modality = "SR"
    start = f"{ds.StudyDate}{str(ds.StudyTime)[:6].ljust(6, '0')}"
    ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
    ds.StationName = "CT01" if kind == "ct" else kind.upper() + "01"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    template_item = Dataset()
    template_item.MappingResource, template_item.TemplateIdentifier = "DCMR", template
    ds.ContentTemplateSequence = Sequence([template_item])
    title, children = content(str(ds.SOPInstanceUID), start)
    ds.ConceptNameCodeSequence = Sequence([title])
    ds.ContentSequence = Sequence(children)
    return ds
