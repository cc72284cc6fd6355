"""DICOM dates, times and date-times (DA, TM, DT) as FHIR date and dateTime values: the
precision they were given, and a UTC offset from TimezoneOffsetFromUTC or the configured
zone. The converters named `da_to_date`, `date_time_to_datetime` and `dt_to_datetime`."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from dicomcast.mapping.context import ConversionError, ConvertContext

_DA = re.compile(r"^(\d{4})(\d{2})?(\d{2})?$")
_TM = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
_OFFSET = re.compile(r"^([+-])(\d{2})(\d{2})$")


def _fhir_date(value: Any) -> tuple[str, tuple[int, int, int] | None]:
    """DICOM DA (also legacy `YYYY.MM.DD`, partial `YYYY`/`YYYYMM`) -> FHIR date text.

    Also returns (y, m, d) when the date is complete, for combining with a time.
    """
    text = str(value).strip()
    if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", text):
        text = text.replace(".", "")
    match = _DA.match(text)
    if not match:
        raise ConversionError(f"{value!r} is not a DICOM date (YYYYMMDD)")
    year, month, day = match.groups()
    if year == "0000":
        raise ConversionError(f"{value!r} has year 0000")
    try:
        if day:
            dt.date(int(year), int(month), int(day))
            return f"{year}-{month}-{day}", (int(year), int(month), int(day))
        if month:
            if not 1 <= int(month) <= 12:
                raise ValueError
            return f"{year}-{month}", None
    except ValueError:
        raise ConversionError(f"{value!r} is not a calendar date") from None
    return year, None


def _fhir_time(value: Any) -> tuple[str, tuple[int, int, int, int]]:
    """DICOM TM (also legacy `HH:MM:SS`) -> `hh:mm:ss[.f]`; missing minutes/seconds are 00.

    FHIR dateTime has no minute-precision form, so `0930` must become `09:30:00`; the hour is
    never lost and midnight is never invented.
    """
    text = str(value).strip().replace(":", "")
    match = _TM.match(text)
    if not match:
        raise ConversionError(f"{value!r} is not a DICOM time (HHMMSS.FFFFFF)")
    hours, minutes, seconds, fraction = match.groups()
    h, m, s = int(hours), int(minutes or 0), int(seconds or 0)
    # DICOM allows second 60 (leap second); FHIR does not.
    if h > 23 or m > 59 or s > 60:
        raise ConversionError(f"{value!r} is not a time of day")
    s = min(s, 59)
    micro = int((fraction or ".0")[1:].ljust(6, "0"))
    return f"{h:02d}:{m:02d}:{s:02d}{fraction or ''}", (h, m, s, micro)


def _offset(value: Any) -> str:
    text = str(value).strip()
    match = _OFFSET.match(text)
    if not match or int(match.group(2)) > 14 or int(match.group(3)) > 59:
        raise ConversionError(f"{value!r} is not a UTC offset (+HHMM)")
    sign, hh, mm = match.groups()
    return f"{sign}{hh}:{mm}"


def _zone_offset(date: tuple[int, int, int], time: tuple[int, int, int, int], zone: Any) -> str:
    local = dt.datetime(*date, *time, tzinfo=zone)
    delta = local.utcoffset() or dt.timedelta(0)
    minutes = int(delta.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def da_to_date(value: Any, ctx: ConvertContext) -> str:
    return _fhir_date(value)[0]


def date_time_to_datetime(value: Any, ctx: ConvertContext) -> str | None:
    """(DA, TM, TimezoneOffsetFromUTC) -> FHIR dateTime, keeping the precision given.

    A date alone stays a date; a time gets the DICOM offset, else the configured zone's
    offset on that day (daylight saving included).
    """
    if not isinstance(value, tuple):
        value = (value, None, None)
    date_value, time_value, offset_value = (*tuple(value), None, None, None)[:3]
    if date_value is None:
        return None
    date_text, full_date = _fhir_date(date_value)
    if time_value is None or full_date is None:
        return date_text
    try:
        time_text, time_parts = _fhir_time(time_value)
        if offset_value is not None:
            zone_text = _offset(offset_value)
        else:
            zone_text = _zone_offset(full_date, time_parts, ctx.zone)
    except ConversionError as exc:
        # A good date is worth keeping when only its time or offset is broken.
        ctx.warnings.append(f"time dropped, date kept: {exc}")
        return date_text
    return f"{date_text}T{time_text}{zone_text}"


_DT = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


def dt_to_datetime(value: Any, ctx: ConvertContext) -> str:
    """DICOM DT (`YYYYMMDDHHMMSS.FFFFFF&ZZXX`, any prefix of it) -> FHIR dateTime."""
    text = str(value).strip()
    match = _DT.match(text)
    if not match:
        raise ConversionError(f"{value!r} is not a DICOM date-time (DT)")
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    date_text, full_date = _fhir_date(year + (month or "") + (day or ""))
    if hour is None or full_date is None:
        return date_text
    time_text, time_parts = _fhir_time(hour + (minute or "") + (second or "") + (fraction or ""))
    zone_text = _offset(offset) if offset else _zone_offset(full_date, time_parts, ctx.zone)
    return f"{date_text}T{time_text}{zone_text}"
