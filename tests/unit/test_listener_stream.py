"""The listener's streaming header walk (`HeaderBuffer`): every transfer syntax a sender
may use, fed in fragments of any size, keeps exactly the header, drops top-level bulk data
as it passes, and tells a dataset cut short from a whole one."""

from __future__ import annotations

import io
import random

import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomFileLike
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from dicomcast.sources.dimse.stream import DEFLATED, HeaderBuffer

SYNTAXES = [
    ("1.2.840.10008.1.2", True, True),  # implicit VR little endian
    ("1.2.840.10008.1.2.1", False, True),  # explicit VR little endian
    ("1.2.840.10008.1.2.2", False, False),  # explicit VR big endian (retired, still sent)
]


def dataset(pixels: bytes, *, encapsulated: bool = False) -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "P1"
    ds.StudyInstanceUID = "1.2.3"
    ds.SOPInstanceUID = "1.2.3.4"
    item = Dataset()
    item.CodeValue = "113691"
    nested = Dataset()
    nested.CodeMeaning = "inner"
    item.ConceptNameCodeSequence = Sequence([nested])
    ds.ContentSequence = Sequence([item, Dataset()])
    ds.Rows = 2
    if encapsulated:
        ds.PixelData = encapsulate([pixels[: len(pixels) // 2], pixels[len(pixels) // 2 :]])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = pixels
        ds["PixelData"].VR = "OW"
    ds.DataSetTrailingPadding = b"\0\0"  # an element after the pixel data is kept
    return ds


def encoded(ds: Dataset, implicit: bool, little: bool, *, undefined: bool = True) -> bytes:
    for element in ds.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = undefined
    for item in (*ds.ContentSequence, *ds.ContentSequence[0].ConceptNameCodeSequence):
        item.is_undefined_length_sequence_item = undefined
    out = io.BytesIO()
    fp = DicomFileLike(out)
    fp.is_implicit_VR, fp.is_little_endian = implicit, little
    write_dataset(fp, ds)
    return out.getvalue()


def fed(data: bytes, syntax: str, *, limit: int = 2**20, seed: int = 0) -> HeaderBuffer:
    buffer = HeaderBuffer(syntax, limit)
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        step = rng.choice((1, 3, 7, 12, 500, 16384))
        buffer.write(data[pos : pos + step])
        pos += step
    return buffer


def decoded(buffer: HeaderBuffer, implicit: bool, little: bool) -> Dataset:
    return read_dataset(io.BytesIO(buffer.getvalue()), implicit, little)


@pytest.mark.parametrize(("syntax", "implicit", "little"), SYNTAXES)
@pytest.mark.parametrize("undefined", [True, False])
def test_the_header_is_kept_whole_and_the_pixels_dropped(
    syntax: str, implicit: bool, little: bool, undefined: bool
) -> None:
    pixels = bytes(range(256)) * 400
    data = encoded(dataset(pixels), implicit, little, undefined=undefined)
    for seed in range(5):
        buffer = fed(data, syntax, seed=seed)
        assert not buffer.truncated and not buffer.overflow
        assert buffer.dropped >= len(pixels) and buffer.kept < 1000
        header = decoded(buffer, implicit, little)
        assert "PixelData" not in header and header.PatientID == "P1"
        inner = header.ContentSequence[0].ConceptNameCodeSequence[0]
        assert inner.CodeMeaning == "inner" and len(header.ContentSequence) == 2
        assert header.DataSetTrailingPadding == b"\0\0"


def test_encapsulated_pixel_data_of_undefined_length_is_walked_past() -> None:
    pixels = bytes(10_000)
    data = encoded(dataset(pixels, encapsulated=True), False, True)
    buffer = fed(data, "1.2.840.10008.1.2.4.50")
    assert not buffer.truncated and buffer.dropped >= len(pixels)
    assert decoded(buffer, False, True).SOPInstanceUID == UID("1.2.3.4")


@pytest.mark.parametrize(("syntax", "implicit", "little"), SYNTAXES)
def test_a_dataset_cut_short_is_truncated_wherever_it_ends(
    syntax: str, implicit: bool, little: bool
) -> None:
    data = encoded(dataset(bytes(1000)), implicit, little)
    for cut in (1, 5, 9, 501, len(data) - 1):
        assert fed(data[: len(data) - cut], syntax).truncated, cut
    assert not fed(data, syntax).truncated


def test_a_header_past_the_limit_overflows_and_keeps_nothing() -> None:
    ds = dataset(b"")
    ds.TextValue = "x" * 5000
    buffer = fed(encoded(ds, False, True), "1.2.840.10008.1.2.1", limit=4096)
    assert buffer.overflow and buffer.getvalue() == b""


def test_garbage_is_malformed_not_a_crash() -> None:
    rng = random.Random(7)
    for _ in range(200):
        noise = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300)))
        buffer = fed(noise, "1.2.840.10008.1.2.1", seed=rng.randrange(100))
        assert buffer.truncated or buffer.kept == len(noise)


def test_a_deflated_dataset_is_kept_as_it_came() -> None:
    buffer = fed(b"\x78\x9c" + bytes(100), DEFLATED[0])
    assert buffer.getvalue() == b"\x78\x9c" + bytes(100) and not buffer.truncated
