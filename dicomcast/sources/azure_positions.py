"""Positions in the DICOM service's change feed: v1 sequence numbers are plain integers;
v2 positions are the service's timestamps (seven decimals, kept whole) with the count of
entries already read at that instant, `2026-12-07T10:00:00.1234567Z#3`."""

from __future__ import annotations

import calendar
import re
import time
from typing import Any

from dicomcast.errors import StoredValueError

TIMESTAMP = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?\s*(Z|[+-]\d\d:?\d\d)?",
    re.IGNORECASE,
)


def instant(timestamp: Any) -> tuple[int, int] | None:
    """A feed Timestamp as (epoch seconds, nanoseconds), at the service's full precision
    (seven decimals: datetime would cut the last one and merge distinct instants)."""
    match = TIMESTAMP.fullmatch(str(timestamp).strip()) if timestamp is not None else None
    if not match:
        return None
    year, month, day, hour, minute, second = (int(match.group(i)) for i in range(1, 7))
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (OverflowError, ValueError):
        return None
    zone = match.group(8)
    if zone and zone.upper() != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    fraction = (match.group(7) or "").ljust(9, "0")
    return seconds, int(fraction)


FUTURE_TOLERANCE = 24 * 3600.0  # clocks disagree; a day ahead is a broken or hostile feed


def _now_instant(ahead: float = 0.0) -> tuple[int, int]:
    return int(time.time() + ahead), 0


def parse_v2_cursor(cursor: str | None) -> tuple[str | None, int]:
    """(start time, entries to skip at it) from a v2 cursor; an operator may set a bare
    ISO time. `StoredValueError` for anything else (a v1 sequence, say)."""
    if not cursor:
        return None, 0
    start, _, skip = cursor.partition("#")
    if instant(start) is None or (skip and not (skip.isascii() and skip.isdigit())):
        raise StoredValueError(
            f"the cursor {cursor[:60]!r} is not a change feed v2 position (an ISO time, "
            "optionally followed by #<entries to skip>): set one with `dicomcast cursor set`"
        )
    return start, int(skip or 0)
