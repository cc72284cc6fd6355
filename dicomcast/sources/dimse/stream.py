"""A received dataset's header, kept while it streams in; its bulk data never held.

pynetdicom collects a C-STORE's dataset in memory before the handler sees it: a 2 GB
multiframe would cost 2 GB (and twice that while it is decoded). `HeaderBuffer` stands in
for that collection and walks the encoded elements as the fragments arrive: top-level
bulk elements (pixel data, waveform and spectroscopy data, an encapsulated document) are
counted past and dropped, everything else is kept. So memory is bounded by the header,
and the walk knows at the end whether the dataset was whole: a last element that runs past
the end is `truncated`, and the instance is refused instead of acknowledged.

A deflated transfer syntax cannot be walked without inflating; it is kept as it came,
up to the same limit.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
# Top-level elements that are bulk data, never metadata (PS3.5 7.6 and PS3.3's modules).
BULK = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009, 0x54000110, 0x54001010, 0x00420011})
# VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})  # fmt: skip
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")


@dataclass
class _Frame:
    """An open container of undefined length: a dataset (the top, or an item) or a sequence."""

    dataset: bool
    keep: bool
    implicit: bool  # a UN of undefined length holds implicit-VR items (PS3.5 6.2.2)


class HeaderBuffer(io.BytesIO):
    """Written with a dataset's encoded fragments in order; holds only what is kept."""

    def __init__(self, syntax: str, limit: int) -> None:
        super().__init__()
        self.walk = syntax not in DEFLATED
        self.implicit = syntax == IMPLICIT_LE
        self.order = ">" if syntax == EXPLICIT_BE else "<"
        self.limit = limit
        self.kept = 0
        self.dropped = 0
        self.overflow = False  # the header alone passed the limit: nothing usable is kept
        self.malformed = False  # an element header that cannot be one
        self._pending = b""
        self._left = 0  # bytes of the current element's value still to pass
        self._keeping = True  # whether those bytes are kept
        self._stack = [_Frame(dataset=True, keep=True, implicit=self.implicit)]

    @property
    def truncated(self) -> bool:
        """Whether the data ended inside an element or an open container."""
        return self.walk and (
            self.malformed or bool(self._pending) or self._left > 0 or len(self._stack) > 1
        )

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        size = len(data)
        if not self.walk:
            self._emit(bytes(data))
        elif not self.malformed:
            self._feed(bytes(data))
        return size

    def _emit(self, data: bytes) -> None:
        if self.overflow:
            return
        self.kept += len(data)
        if self.kept > self.limit:
            self.overflow = True
            self.seek(0)
            self.truncate()  # what was kept is useless now: give the memory back
            return
        super().write(data)

    def _feed(self, data: bytes) -> None:
        buf = self._pending + data if self._pending else data
        pos, end = 0, len(buf)
        while pos < end:
            if self._left:
                n = min(self._left, end - pos)
                if self._keeping:
                    self._emit(buf[pos : pos + n])
                else:
                    self.dropped += n
                pos += n
                self._left -= n
                continue
            used = self._header(buf, pos, end)
            if used == 0:
                break
            pos += used
            if self.malformed:
                return
        self._pending = buf[pos:]

    def _header(self, buf: bytes, pos: int, end: int) -> int:
        """Read one element (or item) header at `pos`: the bytes it used, 0 if incomplete."""
        if end - pos < 8:
            return 0
        frame = self._stack[-1]
        group, elem = struct.unpack_from(self.order + "HH", buf, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:  # items and delimiters: a tag and a 4-byte length, no VR
            (length,) = struct.unpack_from(self.order + "L", buf, pos + 4)
            self._delimiter(tag, length, frame, buf[pos : pos + 8])
            return 8
        if not frame.dataset:
            self.malformed = True  # a sequence holds only items
            return 8
        vr = b""
        if frame.implicit:
            (length,) = struct.unpack_from(self.order + "L", buf, pos + 4)
            size = 8
        elif (vr := buf[pos + 4 : pos + 6]) in LONG_VRS:
            if end - pos < 12:
                return 0
            (length,) = struct.unpack_from(self.order + "L", buf, pos + 8)
            size = 12
        else:
            (length,) = struct.unpack_from(self.order + "H", buf, pos + 6)
            size = 8
        keep = frame.keep and not (len(self._stack) == 1 and tag in BULK)
        implicit = frame.implicit or vr == b"UN"
        self._open(keep, buf[pos : pos + size], length, dataset=False, implicit=implicit)
        return size

    def _delimiter(self, tag: int, length: int, frame: _Frame, raw: bytes) -> None:
        if tag == ITEM and not frame.dataset:
            self._open(frame.keep, raw, length, dataset=True, implicit=frame.implicit)
        elif (tag == ITEM_END and frame.dataset and len(self._stack) > 1) or (
            tag == SEQUENCE_END and not frame.dataset
        ):
            self._close(frame, raw)
        else:
            self.malformed = True

    def _open(self, keep: bool, raw: bytes, length: int, *, dataset: bool, implicit: bool) -> None:
        if keep:
            self._emit(raw)
        else:
            self.dropped += len(raw)
        if length == UNDEFINED:
            self._stack.append(_Frame(dataset=dataset, keep=keep, implicit=implicit))
        else:
            self._left, self._keeping = length, keep

    def _close(self, frame: _Frame, raw: bytes) -> None:
        if frame.keep:
            self._emit(raw)
        else:
            self.dropped += len(raw)
        self._stack.pop()
