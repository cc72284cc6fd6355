"""Orthanc: the `/changes` feed, DICOMweb study metadata, and `/series` for reconciling.

Feed facts this relies on (see shared/design/servers.md): `Seq` never repeats and has gaps;
deletes are not logged at all; a `Last` below our cursor means the database was replaced.
Study keys are Orthanc study IDs (they already separate two patients' studies that share a
StudyInstanceUID).

Only study-level entries are used; instance and series entries are read past, not looked
up. Finding an instance's or a series' study costs a request each (instances were 3/4 of a
catch-up's time, series lookups a tenth of its CPU), and it is never needed: a new study
logs `NewStudy`, and every stored instance, late ones and new series included, makes its
study unstable, so Orthanc logs `StableStudy` again `StableAge` seconds later. The one
gap, Stable events still pending when Orthanc restarts, is what the reconcile scan's
instance counts catch.
"""

from __future__ import annotations

import calendar
import logging
import re
import time
from typing import Any

from dicomcast.config import SourceSettings
from dicomcast.errors import MappingError, SourceRejected, SourceUnavailable, StoredValueError
from dicomcast.http import Bounds, send
from dicomcast.model import DateSpan, DirtyMark, Skipped, StudyLocation
from dicomcast.sources.base import ArchivePage, FeedPage, FetchedStudy, SourceContext
from dicomcast.sources.dicomweb_reads import metadata, study_of
from dicomcast.sources.rest import NotFound, RestSource, sequence_number
from dicomcast.studyview import is_uid, text_value, whole_text
from dicomcast.urls import mask_url

log = logging.getLogger(__name__)

STUDY_CHANGES = frozenset({"NewStudy", "StableStudy", "UpdatedAttachment", "UpdatedMetadata"})
PATIENT_ID = "00100020"
PLUGIN_MISSING = (
    "Orthanc answers, but not its DICOMweb plugin (GET dicom-web/studies is 404): load the "
    "plugin (Plugins) and route /dicom-web/ to it; nothing is deleted meanwhile"
)
ORTHANC_ID = re.compile(r"[0-9A-Za-z-]{1,64}")  # never a path: IDs go into URLs


def _event_time(date: Any) -> float | None:
    """Orthanc's `Date` (`20261123T182242`, UTC) -> epoch seconds."""
    try:
        return float(calendar.timegm(time.strptime(str(date), "%Y%m%dT%H%M%S")))
    except (TypeError, ValueError):
        return None


class OrthancSource(RestSource):
    """A `ChangeFeed` (`/changes`, which logs no deletions), a `StudyListing` for the
    reconcile scan and an `ArchiveListing`."""

    kind = "orthanc"
    server = "Orthanc"

    def __init__(self, settings: SourceSettings, **options: Any) -> None:
        super().__init__(settings, **options)
        self._location = StudyLocation(settings.published_url, settings.name)

    def location(self, key: str) -> StudyLocation:
        return self._location

    def default_location(self) -> StudyLocation:
        return self._location

    def check(self, timeout: float = 5.0) -> str:
        """One quick, unretried GET /system: for readiness and `check-config`."""
        root = mask_url(self.settings.url)
        hint = f"is DICOMCAST_SOURCE_URL ({root}) Orthanc's REST root, such as http://host:8042?"
        try:
            response = send(
                self.http,
                "GET",
                "system",
                "Orthanc GET system",
                SourceUnavailable,
                SourceRejected,
                timeout=timeout,
                bounds=Bounds(deadline=timeout),
            )
        except SourceRejected as exc:
            if exc.status == 404:
                raise SourceRejected(f"{exc}: {hint}", status=404) from None
            raise
        try:
            system = response.json()
            about = f"Orthanc {system.get('Version', '?')} ({system.get('Name', '')})"
        except (ValueError, AttributeError):
            raise SourceUnavailable(
                f"Orthanc /system did not return JSON: {hint}", outage=True
            ) from None
        self._check_dicomweb(timeout)
        return f"{about}, DICOMweb plugin answers"

    def _check_dicomweb(self, timeout: float) -> None:
        """Every study is read through the DICOMweb plugin: without it nothing can be
        synced, and a 404 from it must never read as "deleted"."""
        try:
            send(
                self.http,
                "GET",
                "dicom-web/studies",
                "Orthanc DICOMweb QIDO",
                SourceUnavailable,
                SourceRejected,
                timeout=timeout,
                bounds=Bounds(deadline=timeout),
                params={"limit": "1"},
            )
        except SourceRejected as exc:
            if exc.status == 404:
                raise SourceUnavailable(PLUGIN_MISSING, outage=True, status=404) from None
            raise

    # --- the change feed

    def read_changes(self, cursor: str | None, limit: int) -> FeedPage:
        since = sequence_number(cursor or 0)
        if since is None:
            raise StoredValueError(
                f"the stored cursor {str(cursor)[:40]!r} is not an Orthanc change sequence "
                "number: set one with `dicomcast cursor set`"
            )
        page = self.rest.get("changes", since=since, limit=limit)
        if not isinstance(page, dict) or not isinstance(page.get("Changes", []), list):
            raise SourceUnavailable("Orthanc /changes answer is not a change page")
        changes = [c for c in page.get("Changes") or [] if isinstance(c, dict)]
        last = sequence_number(page.get("Last"))
        if last is None:
            raise SourceUnavailable("Orthanc /changes answer has no valid 'Last'")
        if not changes and last < since:
            log.error(
                "Orthanc change feed is at %d but our cursor is %d: the archive's database was "
                "reset or replaced; restarting from 0 and scanning for vanished studies",
                last,
                since,
            )
            return FeedPage([], "0", str(last), done=False, reset=True)
        marks: list[DirtyMark] = []
        skipped: list[Skipped] = []
        seqs = [since, last]
        for change in changes:
            seq = sequence_number(change.get("Seq"))
            if seq is None:
                skipped.append(Skipped(f"after {since}", "change entry without a valid Seq"))
                continue
            if seq > last:
                # Past the feed's own head: following it would skip every change to come.
                skipped.append(Skipped(str(seq), f"Seq beyond the feed's head {last}"))
                continue
            seqs.append(seq)
            key, problem = self._study_of(change)
            if problem:
                skipped.append(Skipped(str(seq), problem))
            elif key:
                marks.append(DirtyMark(key, _event_time(change.get("Date"))))
        return FeedPage(
            marks,
            str(max(seqs)),
            str(last),
            page.get("Done", True) is not False,
            changes_read=len(changes),
            skipped=skipped,
        )

    def next_position(self, cursor: str | None) -> str:
        return str(int(cursor or 0) + 1)

    def head(self) -> str:
        """The sequence number of Orthanc's newest change (`/changes?last`)."""
        page = self.rest.get("changes", last="")
        last = sequence_number(page.get("Last")) if isinstance(page, dict) else None
        if last is None:
            raise SourceUnavailable("Orthanc /changes?last answer has no valid 'Last'")
        return str(last)

    def _study_of(self, change: dict[str, Any]) -> tuple[str | None, str | None]:
        """(the study a change names, or None; why it cannot be used, or None)."""
        kind, resource_id = change.get("ChangeType"), change.get("ID")
        if not isinstance(resource_id, str) or not ORTHANC_ID.fullmatch(resource_id):
            return None, "change entry without a valid Orthanc ID"
        if change.get("ResourceType") == "Study" and kind in STUDY_CHANGES:
            return resource_id, None
        return None, None

    # --- one study

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        if not ORTHANC_ID.fullmatch(key):
            raise MappingError("not an Orthanc study ID", detail=f"study key {key!r}")
        try:
            study = self.rest.get(f"studies/{key}")
        except NotFound:
            return FetchedStudy.absent(key)  # REST is Orthanc's own index: its 404 is final
        if not isinstance(study, dict):
            raise SourceUnavailable("Orthanc study answer is not an object", outage=True)
        tags = study.get("MainDicomTags")
        study_uid = str((tags if isinstance(tags, dict) else {}).get("StudyInstanceUID") or "")
        study_uid = study_uid.strip()
        if not is_uid(study_uid):
            # Never a request with it (it could be a path: `1.2/../../admin`), never "gone".
            raise MappingError(
                "the study's StudyInstanceUID is missing or not a valid DICOM UID",
                detail=f"StudyInstanceUID {study_uid[:200]!r}",
            )
        stable = bool(study.get("IsStable", True))
        if unless_unstable and not stable:  # still receiving: skip the big metadata read
            return FetchedStudy(key, None, stable=False, study_uid=study_uid, unread=True)
        patient_tags = study.get("PatientMainDicomTags")
        patient_id = patient_tags.get("PatientID") if isinstance(patient_tags, dict) else None
        found = metadata(self.rest, "dicom-web/", study_uid, self.metadata_filter())
        if found is None:
            return self._absent_or_misrouted(key, study_uid)
        # DICOMweb answers by StudyInstanceUID alone; keep only this Orthanc study's patient.
        instances = [
            m
            for m in found
            if patient_id is None
            or whole_text(m, PATIENT_ID) == patient_id
            or (not patient_id and not text_value(m, PATIENT_ID))
        ]
        view, orphans = study_of(instances, study_uid)
        if view is None:  # deleted between the two reads, or the two APIs disagree
            return self._absent_or_misrouted(key, study_uid, empty=True)
        return FetchedStudy(key, view, stable, study_uid, orphans)

    def _absent_or_misrouted(
        self, key: str, study_uid: str, *, empty: bool = False
    ) -> FetchedStudy:
        """DICOMweb has no such study: gone only if REST now agrees. A study REST still
        holds that DICOMweb denies means the plugin is not loaded, or a proxy does not
        route `/dicom-web`: an outage of the whole source (it pauses, FHIR keeps all)."""
        try:
            self.rest.get(f"studies/{key}")
        except NotFound:
            return FetchedStudy.absent(key, study_uid)
        if empty:  # deterministic: every instance unreadable, or none of its patient
            raise MappingError(
                "Orthanc's DICOMweb metadata holds no usable instance of a study its REST "
                "API still has (instances without the study's UID or PatientID)",
                detail=f"StudyInstanceUID {study_uid}",
            )
        # The plugin itself answers? Then the 404 is this study's own (Orthanc's DICOMweb
        # cannot find some odd studies its REST API holds): park it, the others go on.
        self._check_dicomweb(self.rest.bounds.deadline)
        raise MappingError(
            "Orthanc's DICOMweb plugin answers, but finds no study of this StudyInstanceUID "
            "although Orthanc's REST API holds it: the study cannot be read",
            detail=f"StudyInstanceUID {study_uid}",
        )

    def lookup_study(self, study_uid: str) -> list[str]:
        def once() -> Any:
            return self.rest.request("POST", "tools/lookup", content=study_uid).json()

        found = self.rest.retry.call(once)
        return [
            str(item["ID"])
            for item in (found if isinstance(found, list) else [])
            if isinstance(item, dict) and item.get("Type") == "Study" and item.get("ID")
        ]

    # --- the archive, for a backfill

    def archive(self, span: DateSpan, after: str | None, limit: int) -> ArchivePage:
        """`/tools/find` at the study level, paged by offset (Orthanc answers in the order
        studies arrived, so studies stored meanwhile land on later pages)."""
        offset = int(after or 0)
        query = {"StudyDate": span.query} if span.query else {}

        def once() -> Any:
            body = {"Level": "Study", "Query": query, "Since": offset, "Limit": limit}
            return self.rest.request("POST", "tools/find", json=body).json()

        found = self.rest.retry.call(once)
        if not isinstance(found, list):
            raise SourceUnavailable("Orthanc /tools/find did not return a list")
        keys = [str(k) for k in found if isinstance(k, str) and ORTHANC_ID.fullmatch(k)]
        return ArchivePage(keys, str(offset + len(found)) if len(found) >= limit else None)

    # --- everything, for deletions the feed does not log

    def covers(self, key: str) -> bool:
        """The listing is the whole archive."""
        return True

    def list_studies(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        since, limit = 0, 1000
        while True:
            try:
                page = self.rest.get("series", expand="", since=since, limit=limit)
            except NotFound:
                raise SourceUnavailable("Orthanc has no /series: not an Orthanc?") from None
            if not isinstance(page, list):
                raise SourceUnavailable("Orthanc /series did not return a list")
            for series in page:
                parent = str(series.get("ParentStudy", ""))
                if parent:
                    counts[parent] = counts.get(parent, 0) + len(series.get("Instances", []))
            if len(page) < limit:
                return counts
            since += limit


def from_settings(settings: SourceSettings, context: SourceContext) -> OrthancSource:
    """An Orthanc source, as the registry builds it."""
    return OrthancSource.from_context(settings, context)


def check_cursor(settings: SourceSettings, value: str) -> None:
    """A position of `/changes`: a change's sequence number."""
    if sequence_number(value) is None:  # `²` passes str.isdigit; 5,000 digits do too
        raise StoredValueError(f"{value[:40]!r} is not an Orthanc change sequence number")
