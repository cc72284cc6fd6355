"""Synthetic but realistic DICOM studies, made with pydicom, for the demo, tests and bench.

Everything is derived from a seed string, so the same call always makes the same UIDs: tests
can predict exactly which FHIR resources must appear.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dicomcast.sandbox.dose_reports import make_dose_report
from dicomcast.studyview import KOS_SOP_CLASS, REJECTION_TITLES

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "SR": "1.2.840.10008.5.1.4.1.1.88.22",
}
# The DICOM "UID root" for examples; never a real organization's root.
_ROOT = "1.2.826.0.1.3680043.8.498."


def uid(*parts: object) -> str:
    """A deterministic UID from the given parts."""
    return str(generate_uid(prefix=_ROOT, entropy_srcs=[str(p) for p in parts]))


@dataclass
class SeriesSpec:
    modality: str
    instances: int
    description: str = ""
    body_part: str | None = None
    laterality: str | None = None
    number: int = 1
    dose: str | None = None  # a dose report series: "ct", "xray" or "nm" (see dose_reports)


@dataclass
class StudySpec:
    """What one synthetic study holds. Patient fields are written as given (raw DICOM text)."""

    key: str
    patient_id: str
    patient_name: str
    birth_date: str = ""
    sex: str = ""
    issuer: str | None = None
    issuer_oid: str | None = None
    accession: str = ""
    accession_issuer_oid: str | None = None
    description: str = ""
    study_date: str = "20260102"
    study_time: str = "093015"
    tz_offset: str | None = None
    referring: str = ""
    institution: str = ""
    series: list[SeriesSpec] = field(default_factory=list)

    @property
    def study_uid(self) -> str:
        return uid("study", self.key)

    def series_uid(self, index: int) -> str:
        return uid("series", self.key, index)

    def instance_uid(self, series_index: int, number: int) -> str:
        return uid("instance", self.key, series_index, number)

    @property
    def instance_count(self) -> int:
        return sum(s.instances for s in self.series)


def _instance(spec: StudySpec, series_index: int, series: SeriesSpec, number: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SOP_CLASSES.get(series.modality, SOP_CLASSES["CT"])
    ds.SOPInstanceUID = spec.instance_uid(series_index, number)
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid(series_index)
    ds.PatientID = spec.patient_id
    ds.PatientName = spec.patient_name
    ds.PatientBirthDate = spec.birth_date
    ds.PatientSex = spec.sex
    if spec.issuer:
        ds.IssuerOfPatientID = spec.issuer
    if spec.issuer_oid:
        qualifier = Dataset()
        qualifier.UniversalEntityID = spec.issuer_oid
        qualifier.UniversalEntityIDType = "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = Sequence([qualifier])
    ds.AccessionNumber = spec.accession
    if spec.accession_issuer_oid:
        issuer = Dataset()
        issuer.UniversalEntityID = spec.accession_issuer_oid
        issuer.UniversalEntityIDType = "ISO"
        ds.IssuerOfAccessionNumberSequence = Sequence([issuer])
    ds.StudyDescription = spec.description
    ds.StudyDate = spec.study_date
    ds.StudyTime = spec.study_time
    if spec.tz_offset:
        ds.TimezoneOffsetFromUTC = spec.tz_offset
    ds.ReferringPhysicianName = spec.referring
    if spec.institution:
        ds.InstitutionName = spec.institution
    ds.StudyID = spec.key[:16]
    ds.Modality = series.modality
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.SeriesDate = spec.study_date
    ds.SeriesTime = spec.study_time
    if series.body_part:
        ds.BodyPartExamined = series.body_part
    if series.laterality:
        ds.Laterality = series.laterality
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def instances(spec: StudySpec) -> Iterator[Dataset]:
    for series_index, series in enumerate(spec.series):
        for number in range(1, series.instances + 1):
            ds = _instance(spec, series_index, series, number)
            yield make_dose_report(ds, series.dose) if series.dose else ds


def rejection_note(spec: StudySpec, rejected: list[Dataset], code: str = "113001") -> Dataset:
    """An IOCM rejection note: a Key Object Selection document in its own series of the
    study, titled by a CID 7011 code, referencing the rejected instances."""
    note = _instance(spec, 90, SeriesSpec("KO", 1, "rejection", number=90), 1)
    for name in ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation"):
        delattr(note, name)
    for name in ("BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData"):
        delattr(note, name)
    note.SOPClassUID = note.file_meta.MediaStorageSOPClassUID = UID(KOS_SOP_CLASS)
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator = code, "DCM"
    title.CodeMeaning = REJECTION_TITLES.get(code, "Of Interest" if code == "113000" else code)
    note.ConceptNameCodeSequence = Sequence([title])
    note.ValueType = "CONTAINER"
    by_series: dict[str, list[Dataset]] = {}
    for ds in rejected:
        by_series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    referenced = []
    for series_uid, members in by_series.items():
        series_item = Dataset()
        series_item.SeriesInstanceUID = series_uid
        sops = []
        for ds in members:
            sop = Dataset()
            sop.ReferencedSOPClassUID = ds.SOPClassUID
            sop.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            sops.append(sop)
        series_item.ReferencedSOPSequence = Sequence(sops)
        referenced.append(series_item)
    evidence = Dataset()
    evidence.StudyInstanceUID = spec.study_uid
    evidence.ReferencedSeriesSequence = Sequence(referenced)
    note.CurrentRequestedProcedureEvidenceSequence = Sequence([evidence])
    return note


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def demo_studies() -> list[StudySpec]:
    """The demo's catalogue: 4 patients, CT/MR/CR/XA/NM, multi-series, issuers, non-ASCII
    names, and a dose report of each kind (CT, projection X-ray, radiopharmaceutical)."""
    return [
        StudySpec(
            key="ct-chest-doe",
            patient_id="MRN1001",
            patient_name="Doe^John^Q^Mr.^Jr.",
            birth_date="19600412",
            sex="M",
            issuer="HOSP-A",
            accession="ACC-1001",
            accession_issuer_oid="1.2.826.0.1.3680043.8.498.2",
            description="CT CHEST W CONTRAST",
            study_time="093015",
            tz_offset="+0100",
            referring="House^Gregory^^Dr.",
            institution="General Hospital",
            series=[
                SeriesSpec("CT", 6, "Axial 5mm", "CHEST", number=1),
                SeriesSpec("CT", 4, "Coronal MPR", "CHEST", number=2),
                SeriesSpec("SR", 1, "Dose report", number=99, dose="ct"),
            ],
        ),
        StudySpec(
            key="mr-brain-doe",
            patient_id="MRN1001",
            patient_name="Doe^John^Q^Mr.^Jr.",
            birth_date="19600412",
            sex="M",
            issuer="HOSP-A",
            accession="ACC-1002",
            description="MR BRAIN",
            study_date="20260310",
            study_time="1412",
            series=[
                SeriesSpec("MR", 5, "T1 SAG", "BRAIN", number=1),
                SeriesSpec("MR", 5, "T2 AX", "BRAIN", number=2),
            ],
        ),
        StudySpec(
            key="cr-hand-yamada",
            patient_id="JP-7788",
            patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう",
            birth_date="19521103",
            sex="M",
            issuer_oid="1.2.392.200036.9116.2.6.1.48",
            accession="ACC-2001",
            description="XR HAND LEFT",
            study_date="20260515",
            study_time="080000.125",
            tz_offset="+0900",
            series=[SeriesSpec("CR", 2, "PA + oblique", "HAND", laterality="L", number=1)],
        ),
        StudySpec(
            key="ct-abdomen-muller",
            patient_id="DE-4455",
            patient_name="Müller^Jürgen",
            birth_date="19850314",
            sex="M",
            issuer="HOSP-A",
            accession="ACC-3001",
            description="CT ABDOMEN",
            study_date="20260620",
            study_time="23",
            series=[SeriesSpec("CT", 8, "Abdomen portal venous", "ABDOMEN", number=3)],
        ),
        StudySpec(
            key="mr-knee-garcia",
            patient_id="MRN2002",
            patient_name="García López^María José",
            birth_date="19750229",
            sex="F",
            accession="",
            description="MR KNEE RIGHT",
            study_date="20261001",
            study_time="1530",
            series=[SeriesSpec("MR", 3, "PD FS COR", "KNEE", laterality="R", number=1)],
        ),
        StudySpec(
            key="xa-angio-muller",
            patient_id="DE-4455",
            patient_name="Müller^Jürgen",
            birth_date="19850314",
            sex="M",
            issuer="HOSP-A",
            accession="ACC-3002",
            description="XA CORONARY ANGIO",
            study_date="20260621",
            study_time="101500",
            tz_offset="+0200",
            institution="General Hospital",
            series=[
                SeriesSpec("XA", 3, "LAO 30", "HEART", number=1),
                SeriesSpec("SR", 1, "Dose report", number=99, dose="xray"),
            ],
        ),
        StudySpec(
            key="nm-dat-garcia",
            patient_id="MRN2002",
            patient_name="García López^María José",
            birth_date="19750229",
            sex="F",
            accession="ACC-4001",
            description="NM DAT SCAN",
            study_date="20261002",
            study_time="1100",
            series=[
                SeriesSpec("NM", 2, "SPECT brain", "BRAIN", number=1),
                SeriesSpec("SR", 1, "Dose report", number=99, dose="nm"),
            ],
        ),
    ]


def bulk_studies(
    count: int,
    per_study: int,
    *,
    patients: int,
    prefix: str,
    series: int = 2,
    modality: str = "CT",
) -> list[StudySpec]:
    """`count` studies of `per_study` instances in `series` series, spread over `patients`."""
    parts = ["CHEST", "ABDOMEN", "PELVIS", "HEAD"]
    sizes = [per_study // series + (1 if n < per_study % series else 0) for n in range(series)]
    return [
        StudySpec(
            key=f"{prefix}-{i}",
            patient_id=f"{prefix.upper()}{i % patients}",
            patient_name=f"{prefix.title()}^Patient{i % patients}",
            birth_date="19650101",
            issuer="HOSP-A",
            accession=f"{prefix.upper()}-ACC{i}",
            description=f"{modality} BULK",
            series=[
                SeriesSpec(modality, size, f"part {n + 1}", parts[n % 4], number=n + 1)
                for n, size in enumerate(sizes)
            ],
        )
        for i in range(count)
    ]


DEMO_ISSUERS = {"HOSP-A": "urn:oid:1.2.826.0.1.3680043.8.498.1"}
DEMO_PATIENT_SYSTEM = "urn:oid:1.2.826.0.1.3680043.8.498.99"


def multiframe_file(path: Path, spec: StudySpec, frames: int) -> int:
    """A one-instance CT of `frames` 512x512 16-bit frames written to `path` without holding
    its pixel data in memory (a gigabyte for 2,048 frames): what pushes a listener's memory.
    Returns the pixel data's size."""
    [ds] = list(instances(spec))[:1]
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.SamplesPerPixel, ds.PixelRepresentation = 1, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    if "PixelData" in ds:
        del ds.PixelData
    dcmwrite(path, ds, enforce_file_format=True)
    frame = bytes(range(256)) * (512 * 512 * 2 // 256)
    with path.open("ab") as out:  # (7FE0,0010) OW, explicit VR little endian
        out.write(struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, len(frame) * frames))
        for _ in range(frames):
            out.write(frame)
    return len(frame) * frames
