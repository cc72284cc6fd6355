"""The DICOMweb reads every HTTP kind shares: WADO-RS study metadata and QIDO-RS study
searches, with the answers servers really give (404 for a study they do not hold, 204 or
an empty body for a search that matches nothing, a cap that looks like the end).

Orthanc (through its DICOMweb plugin), the Microsoft DICOM service and any DICOMweb archive
read a study the same way; only where its path starts differs (`base`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from dicomcast.errors import SourceUnavailable
from dicomcast.sources.rest import NotFound, RestReader
from dicomcast.studyview import STUDY_UID, StudyView, build_study_views, text_value

DICOM_JSON = {"Accept": "application/dicom+json"}
PAGE = 200  # results asked for per QIDO page (the Microsoft DICOM service's largest)
Hook = Callable[[dict[str, Any]], Any] | None


class TooMany(Exception):
    """A search matched `max_matches` or more: a server may stop at a cap of its own and
    look complete, so the caller asks again for less (a shorter date range)."""


def metadata(
    rest: RestReader, base: str, uid: str, hook: Hook = None
) -> list[dict[str, Any]] | None:
    """The study's instances as DICOM JSON (`hook` drops what the mappings never read);
    None when the server holds no such study (404). Anything but a JSON array, an empty
    answer included, is not a working server's answer for a study."""
    try:
        found = rest.get(
            f"{base}studies/{quote(uid, safe='')}/metadata", object_hook=hook, headers=DICOM_JSON
        )
    except NotFound:
        return None
    if not isinstance(found, list):
        raise SourceUnavailable(f"DICOMweb metadata of {uid} is not a JSON array")
    return [m for m in found if isinstance(m, dict)]


def study_of(instances: list[dict[str, Any]], uid: str) -> tuple[StudyView | None, list[str]]:
    """The view of study `uid` among these instances (None: none of them is of it), and
    what was dropped while reading them."""
    views, orphans = build_study_views(instances)
    return next((v for v in views if v.uid == uid), None), orphans


def search(rest: RestReader, base: str, **query: Any) -> list[dict[str, Any]]:
    """One QIDO-RS `studies` answer: its objects ([] for 204, empty, or no match)."""
    found = rest.get(f"{base}studies", headers=DICOM_JSON, **query)
    if found is not None and not isinstance(found, list):
        raise SourceUnavailable("DICOMweb search answer is not a JSON array")
    return [a for a in found or [] if isinstance(a, dict)]


def search_all(rest: RestReader, base: str, max_matches: int, **query: Any) -> list[dict[str, Any]]:
    """Every match, paged by `offset` until a page comes back empty (a server may answer
    fewer than asked per page, so a short page is not the end); `TooMany` at
    `max_matches`."""
    found: list[dict[str, Any]] = []
    while True:
        items = search(rest, base, offset=len(found), limit=PAGE, **query)
        found += items
        if len(found) >= max_matches:
            raise TooMany
        if not items:
            return found


def is_study(answer: dict[str, Any], uid: str) -> bool:
    """A search answer is the study asked for (a server may ignore the UID filter)."""
    return text_value(answer, STUDY_UID) == uid


def lists(rest: RestReader, base: str, uid: str) -> bool:
    """Whether a search for study `uid` finds it."""
    return any(is_study(a, uid) for a in search(rest, base, StudyInstanceUID=uid))
