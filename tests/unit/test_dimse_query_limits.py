"""Query mode against a PACS that answers without end, answers too much, or answers series
UIDs that are not UIDs (a real pynetdicom C-FIND SCP playing it, on loopback): each poll
ends within its deadline with a reason, a window too full is listed in halves, and no value
from an answer becomes a query key."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicomcast.config.source import SourceSettings
from dicomcast.errors import MappingError, SourceUnavailable
from dicomcast.sandbox.servers import free_port
from dicomcast.sources.dimse.source import DimseSource
from tests.unit.test_dimse_source import misbehaving_pacs

TODAY = dt.date(2026, 11, 30)


def source(port: int, **settings: Any) -> DimseSource:
    values: dict[str, Any] = {
        "kind": "dimse",
        "url": f"dicom://127.0.0.1:{port}",
        "remote_ae": "BADPACS",
        "timeout": 2,
        "sweep_interval": 0,
        "lookback_days": 30,
    }
    return DimseSource(SourceSettings(**{**values, **settings}), today=lambda: TODAY)


def study(day: dt.date, n: int) -> Dataset:
    match = Dataset()
    match.StudyInstanceUID = f"1.2.{day:%Y%m%d}.{n}"
    match.StudyDate = f"{day:%Y%m%d}"
    match.NumberOfStudyRelatedInstances = "1"
    match.PatientID = f"P{n}"
    return match


def test_a_c_find_that_never_ends_stops_at_its_deadline() -> None:
    port = free_port()

    def endless(identifier: Dataset) -> Any:
        n = 0
        while True:
            n += 1
            yield 0xFF00, study(TODAY, n)
            time.sleep(0.01)

    server = misbehaving_pacs(port, endless)
    pacs = source(port, find_deadline=1)
    started = time.monotonic()
    try:
        with pytest.raises(SourceUnavailable, match="still answering after 1 s"):
            pacs.list_studies()
        assert time.monotonic() - started < 10
        assert pacs.peer is not None and pacs.peer.opened == pacs.peer.closed
    finally:
        server.shutdown()
        pacs.close()


def test_a_window_with_too_many_matches_is_listed_in_halves() -> None:
    port = free_port()
    days = [TODAY - dt.timedelta(days=d) for d in range(31)]
    held = [study(day, n) for day in days for n in range(10)]  # 310 studies
    asked: list[str] = []

    def by_date(identifier: Dataset) -> Any:
        first, _, last = str(identifier.StudyDate).partition("-")
        asked.append(str(identifier.StudyDate))
        for match in held:
            if first <= match.StudyDate <= last:
                yield 0xFF00, match
        yield 0x0000, None

    server = misbehaving_pacs(port, by_date)
    pacs = source(port, max_matches=100)
    try:
        listed = pacs.list_studies()
        assert len(listed) == 310 and len(pacs.identities) == 310
        assert asked[0] == "20261031-20261130" and len(asked) > 3  # split, then split again
        # One day with more than the cap is an error that says what to raise.
        crowded = [study(TODAY, n) for n in range(150)]
        held[:] = crowded
        with pytest.raises(SourceUnavailable, match=r"single day 2026-11-30.*MAX_MATCHES"):
            pacs.list_studies()
    finally:
        server.shutdown()
        pacs.close()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_series_uids_that_are_not_uids_park_the_study_and_are_never_sent_back() -> None:
    port = free_port()
    asked_images: list[str] = []

    def hostile(identifier: Dataset) -> Any:
        level = identifier.QueryRetrieveLevel
        if level == "STUDY":
            yield 0xFF00, study(TODAY, 1)
        elif level == "SERIES":
            for bad in ("*", "1.2.3/../y"):
                series = Dataset()
                series.StudyInstanceUID = f"1.2.{TODAY:%Y%m%d}.1"
                series.SeriesInstanceUID = bad
                yield 0xFF00, series
        else:
            asked_images.append(str(identifier.SeriesInstanceUID))
        yield 0x0000, None

    server = misbehaving_pacs(port, hostile)
    pacs = source(port)
    try:
        with pytest.raises(MappingError, match="not a UID") as parked:
            pacs.fetch_study(f"{TODAY:%Y%m%d}/1.2.{TODAY:%Y%m%d}.1")
        assert "'*'" in str(parked.value.detail)
        assert asked_images == []
    finally:
        server.shutdown()
        pacs.close()
