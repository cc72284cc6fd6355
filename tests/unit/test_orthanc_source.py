"""The Orthanc source's change feed: study changes become studies without a lookup of any
instance or series, a feed behind the cursor is a reset, empty pages and gaps."""

from __future__ import annotations

import calendar
from typing import Any

import httpx

from dicomcast.config import SourceSettings
from dicomcast.sources.orthanc import OrthancSource


def orthanc(handler: Any) -> OrthancSource:
    settings = SourceSettings(
        name="o",
        kind="orthanc",
        url="http://orthanc.test",
        public_url="http://orthanc.test/dicom-web",
    )
    return OrthancSource(settings, transport=httpx.MockTransport(handler))


def test_feed_marks_studies_from_study_changes_alone_with_no_lookups() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/changes":
            assert request.url.params["since"] == "10"
            return httpx.Response(
                200,
                json={
                    "Changes": [
                        {
                            "ChangeType": "NewInstance",
                            "ID": "i1",
                            "ResourceType": "Instance",
                            "Seq": 11,
                            "Date": "20261123T182242",
                        },
                        {
                            "ChangeType": "NewInstance",
                            "ID": "i-gone",
                            "ResourceType": "Instance",
                            "Seq": 12,
                        },
                        {
                            "ChangeType": "NewSeries",
                            "ID": "s1",
                            "ResourceType": "Series",
                            "Seq": 14,
                            "Date": "20261123T182242",
                        },
                        {
                            "ChangeType": "StableSeries",
                            "ID": "s1",
                            "ResourceType": "Series",
                            "Seq": 15,
                        },
                        {
                            "ChangeType": "StableStudy",
                            "ID": "st2",
                            "ResourceType": "Study",
                            "Seq": 17,
                            "Date": "20261123T182242",
                        },
                        {
                            "ChangeType": "NewPatient",
                            "ID": "p1",
                            "ResourceType": "Patient",
                            "Seq": 18,
                        },
                        {"ChangeType": "NewInstance", "ResourceType": "Instance", "Seq": 19},
                    ],
                    "Done": True,
                    "Last": 19,
                },
            )
        lookups.append(path)
        return httpx.Response(404)

    lookups: list[str] = []
    page = orthanc(handler).read_changes("10", 100)
    # A series entry needs no lookup: its study logs StableStudy too (st2 here).
    assert [m.study_key for m in page.marks] == ["st2"]
    assert page.marks[0].event_time == calendar.timegm((2026, 11, 23, 18, 22, 42, 0, 0, 0))
    assert (page.cursor, page.done, page.reset, page.changes_read) == ("19", True, False, 7)
    assert lookups == []  # no instance, series or study was read to find a study


def test_feed_behind_the_cursor_is_reported_as_a_reset() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"Changes": [], "Done": True, "Last": 3})

    page = orthanc(handler).read_changes("500", 100)
    assert page.reset and page.cursor == "0"


def test_empty_page_keeps_cursor_and_gaps_are_skipped() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"Changes": [], "Done": True, "Last": 500})

    page = orthanc(handler).read_changes("500", 100)
    assert not page.reset and page.cursor == "500" and page.marks == []
