"""The Microsoft DICOM service (Azure Health Data Services, Medical Imaging Server for DICOM).

Feed facts this relies on (shared/design/servers.md):
- v2: `/v2/changefeed?startTime=&offset=&limit=` is ordered by Timestamp, then Sequence;
  `startTime` is inclusive and `offset` skips rows of the window; at most 200 rows a page.
- v1: `/v1/changefeed?offset=&limit=`: `offset` is an exclusive Sequence and `limit` (at most
  100) a window of sequence numbers, so gaps give short or empty pages; only
  `/changefeed/latest` says whether anything follows an empty one.
- Entries carry `Sequence`, `StudyInstanceUid`, `Action` (create, update, delete), `State`
  (current, replaced, deleted), `Timestamp` and, with data partitions, `PartitionName`.

Every entry only says which study changed: the worker reads the study's present state, so
bulk `update`s, deletes and entries for replaced or deleted instances all take the same path.

Cursors are strings in the state DB:
- v1: the last Sequence read.
- v2: `<Timestamp>#<n>`: the Timestamp of the last entry read, and how many entries with
  exactly that Timestamp were read. The next read starts at that (inclusive) time and skips
  them, so nothing is read twice or skipped, and the offset stays small.

Study keys are `partition/StudyInstanceUID` (`Microsoft.Default` without partitioning): the
same UID in two partitions is two studies.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from dicomcast.config import DEFAULT_PARTITION, PARTITION_NAME, SourceSettings
from dicomcast.errors import ConfigError, MappingError, SourceUnavailable, StoredValueError
from dicomcast.http import Bounds
from dicomcast.model import DateSpan, DirtyMark, Skipped, StudyLocation
from dicomcast.sources.azure_positions import (
    FUTURE_TOLERANCE,
    _now_instant,
    instant,
    parse_v2_cursor,
)
from dicomcast.sources.base import ArchivePage, FeedPage, FetchedStudy, SourceContext
from dicomcast.sources.dicomweb_reads import lists, metadata, search, study_of
from dicomcast.sources.rest import NotFound, RestSource, sequence_number
from dicomcast.studyview import STUDY_UID, text_value

log = logging.getLogger(__name__)

V1_WINDOW = 100  # the service's largest v1 `limit`
V2_PAGE = 200  # the service's largest v2 `limit`
UID = re.compile(r"[0-9]+(\.[0-9]+)*")


class AzureDicomSource(RestSource):
    """A `ChangeFeed` that logs deletions (so no `StudyListing` is needed) and an
    `ArchiveListing`."""

    kind = "azure-dicom"
    server = "DICOM service"

    def __init__(self, settings: SourceSettings, **options: Any) -> None:
        if re.search(r"/v\d+(\.\d+)?(-prerelease)?$", settings.url):
            raise ConfigError(
                f"source {settings.name}: give the service URL without the version segment "
                f"({settings.url.rsplit('/', 1)[0]}); the version is api_version"
            )
        super().__init__(settings, **options)
        self.version = settings.api_version
        self.partitions = settings.partitions

    # --- keys and where studies live

    @property
    def partitioned(self) -> bool:
        return self.partitions is not None

    def _wants(self, partition: str) -> bool:
        return self.partitions is None or "*" in self.partitions or partition in self.partitions

    def split_key(self, key: str) -> tuple[str, str]:
        """(partition, StudyInstanceUID) of a key; MappingError for anything else."""
        partition, _, uid = key.rpartition("/")
        if not PARTITION_NAME.fullmatch(partition) or not UID.fullmatch(uid) or len(uid) > 64:
            raise MappingError(f"not a study key of this source (partition/UID): {key!r}")
        return partition, uid

    def _prefix(self, partition: str) -> str:
        if self.partitioned:
            return f"{self.version}/partitions/{partition}/"
        return f"{self.version}/"

    def location(self, key: str) -> StudyLocation:
        partition, _ = self.split_key(key)
        base = self.settings.published_url
        if not self.partitioned:
            return StudyLocation(f"{base}/{self.version}", self.name)
        # The scope leaves out the API version: a study keeps its identity across versions.
        scope = None if partition == DEFAULT_PARTITION else f"{base}/partitions/{partition}"
        return StudyLocation(
            f"{base}/{self.version}/partitions/{partition}", f"{self.name}/{partition}", scope
        )

    def default_location(self) -> StudyLocation | None:
        return None if self.partitioned else self.location(f"{DEFAULT_PARTITION}/0")

    def check(self, timeout: float = 5.0) -> str:
        """One quick, unretried read of the feed's latest entry."""
        response = self.rest.request(
            "GET",
            f"{self.version}/changefeed/latest",
            params={"includeMetadata": "false"},
            timeout=timeout,
            bounds=Bounds(deadline=timeout),
        )
        try:
            latest = response.json()
        except ValueError:
            raise SourceUnavailable("DICOM service: /changefeed/latest is not JSON") from None
        sequence = latest.get("Sequence") if isinstance(latest, dict) else None
        return f"Microsoft DICOM service ({self.version}), feed at sequence {sequence}"

    # --- the change feed

    def read_changes(self, cursor: str | None, limit: int) -> FeedPage:
        if self.version == "v1":
            return self._read_v1(cursor, min(limit, V1_WINDOW))
        return self._read_v2(cursor, min(limit, V2_PAGE))

    def _entries(self, page: Any) -> list[dict[str, Any]]:
        if not isinstance(page, list):
            raise SourceUnavailable("DICOM service change feed answer is not a JSON array")
        return [entry for entry in page if isinstance(entry, dict)]

    def _mark(self, entry: dict[str, Any], skipped: list[Skipped]) -> DirtyMark | None:
        """The study an entry names, or None (another partition, or a malformed entry,
        which is added to `skipped`)."""
        uid = entry.get("StudyInstanceUid")
        partition = entry.get("PartitionName") or DEFAULT_PARTITION
        position = str(entry.get("Sequence"))[:40]
        if not isinstance(uid, str) or not UID.fullmatch(uid) or len(uid) > 64:
            skipped.append(Skipped(position, "entry without a valid StudyInstanceUid"))
            return None
        if not isinstance(partition, str) or not PARTITION_NAME.fullmatch(partition):
            skipped.append(Skipped(position, "entry with an invalid PartitionName"))
            return None
        if not self._wants(partition):
            return None
        when = instant(entry.get("Timestamp"))
        event_time = when[0] + when[1] / 1e9 if when else None
        return DirtyMark(f"{partition}/{uid}", event_time, uid)

    def head(self) -> str:
        """v1: the newest entry's Sequence. v2: its Timestamp, by the service's own clock
        (the entries of that one instant are read again: at least once, never skipped);
        an empty feed's head is its beginning."""
        if self.version == "v1":
            return str(self._latest())
        try:
            latest = self.rest.get("v2/changefeed/latest", includeMetadata="false")
        except NotFound:
            return ""
        stamp = latest.get("Timestamp") if isinstance(latest, dict) else None
        if stamp is None and latest in (None, {}):
            return ""
        if instant(stamp) is None:
            raise SourceUnavailable("DICOM service /changefeed/latest has no valid Timestamp")
        return str(stamp)

    def _latest(self) -> int:
        """The newest entry's Sequence (0 for an empty feed)."""
        try:
            latest = self.rest.get(f"{self.version}/changefeed/latest", includeMetadata="false")
        except NotFound:
            return 0
        if latest is None or latest == {}:
            return 0
        sequence = sequence_number(latest.get("Sequence")) if isinstance(latest, dict) else None
        if sequence is None:
            raise SourceUnavailable("DICOM service /changefeed/latest has no valid Sequence")
        return sequence

    def _read_v1(self, cursor: str | None, window: int) -> FeedPage:
        since = sequence_number(cursor or 0)
        if since is None:
            raise StoredValueError(
                f"the stored cursor {str(cursor)[:40]!r} is not a change feed v1 sequence "
                "number: set one with `dicomcast cursor set`"
            )
        entries = self._entries(
            self.rest.get("v1/changefeed", offset=since, limit=window, includeMetadata="false")
        )
        skipped: list[Skipped] = []
        numbers = (sequence_number(e.get("Sequence")) for e in entries)
        sequences = [n for n in numbers if n is not None]
        if sequences and max(sequences) > since + window:
            # Further than a window ahead: check it against the feed's own head, so that a
            # bogus entry cannot move the cursor past every change to come.
            head = self._latest()
            beyond = {n for n in sequences if n > head}
            if beyond:
                skipped.append(Skipped(str(max(beyond)), f"Sequence beyond the feed's head {head}"))
                entries = [e for e in entries if sequence_number(e.get("Sequence")) not in beyond]
                sequences = [n for n in sequences if n not in beyond]
        if sequences:
            last = max(sequences)
            if last <= since:
                raise SourceUnavailable(
                    f"DICOM service change feed answered offset {since} with older entries"
                )
            marks = [m for m in (self._mark(e, skipped) for e in entries) if m is not None]
            return FeedPage(
                marks, str(last), None, done=False, changes_read=len(entries), skipped=skipped
            )
        # An empty window is either the end of the feed or a gap in the sequence.
        head = self._latest()
        if head < since:
            log.error(
                "DICOM service change feed ends at %d but our cursor is %d: the service's "
                "data was replaced; restarting from 0",
                head,
                since,
            )
            return FeedPage([], "0", str(head), done=False, reset=True)
        if head > since:
            return FeedPage([], str(min(since + window, head)), str(head), done=False)
        return FeedPage([], str(since), str(head), done=True)

    def _read_v2(self, cursor: str | None, limit: int) -> FeedPage:
        start, skip = parse_v2_cursor(cursor)
        params: dict[str, Any] = {"offset": skip, "limit": limit, "includeMetadata": "false"}
        if start:
            params["startTime"] = start
        entries = self._entries(self.rest.get("v2/changefeed", **params))
        skipped: list[Skipped] = []
        horizon = _now_instant(FUTURE_TOLERANCE)
        future = [e for e in entries if (instant(e.get("Timestamp")) or (0, 0)) > horizon]
        if future:
            # An entry from the future would move the cursor past every change to come:
            # stop before it (it is read again, and skipped again, until its time comes).
            first = future[0]
            skipped.append(
                Skipped(str(first.get("Timestamp"))[:40], "Timestamp in the future; not followed")
            )
            entries = entries[: entries.index(first)]
            if not entries:
                return FeedPage([], cursor or "", None, done=True, skipped=skipped)
        if not entries:
            return FeedPage([], cursor or "", None, done=True)
        last_raw = entries[-1].get("Timestamp")
        last = instant(last_raw)
        start_at = instant(start) if start else None
        if last is None or (start_at is not None and last < start_at):
            raise SourceUnavailable(
                "DICOM service change feed v2 entries are not in Timestamp order from startTime"
            )
        same = sum(1 for e in entries if instant(e.get("Timestamp")) == last)
        if start_at == last:
            same = skip + len(entries)  # still inside the instant we started at
        marks = [m for m in (self._mark(e, skipped) for e in entries) if m is not None]
        return FeedPage(
            marks,
            f"{str(last_raw).strip()}#{same}",
            None,
            done=len(entries) < limit or bool(future),
            changes_read=len(entries),
            skipped=skipped,
        )

    def next_position(self, cursor: str | None) -> str:
        if self.version == "v1":
            return str(int(cursor or 0) + 1)
        start, skip = parse_v2_cursor(cursor)
        return f"{start}#{skip + 1}" if start else cursor or ""

    # --- one study

    def fetch_study(self, key: str, *, unless_unstable: bool = False) -> FetchedStudy:
        """The study's current metadata; the service has no notion of an unstable study."""
        partition, uid = self.split_key(key)
        instances = metadata(self.rest, self._prefix(partition), uid, self.metadata_filter())
        view, orphans = study_of(instances or [], uid)
        if view is None:
            return self._absent(key, partition, uid)
        return FetchedStudy(key, view, True, uid, orphans)

    def _absent(self, key: str, partition: str, uid: str) -> FetchedStudy:
        """The metadata read found no study: gone only when a QIDO search for its UID
        agrees (a 404 from a misrouted path or a lagging replica must delete nothing)."""
        if lists(self.rest, self._prefix(partition), uid):
            raise SourceUnavailable(
                "the DICOM service's metadata read found no study that its QIDO search "
                "still lists; reading it again later"
            )
        return FetchedStudy.absent(key, uid)

    def lookup_study(self, study_uid: str) -> list[str]:
        if not UID.fullmatch(study_uid):
            return []
        return [
            f"{partition}/{study_uid}"
            for partition in self._partition_names()
            if lists(self.rest, self._prefix(partition), study_uid)
        ]

    def archive(self, span: DateSpan, after: str | None, limit: int) -> ArchivePage:
        """QIDO-RS `studies` per partition, paged by `offset` (at most 200 a page); the
        position is `partition|offset`."""
        names = sorted(self._partition_names())
        partition, _, offset = (after or f"{names[0] if names else ''}|0").partition("|")
        names = [n for n in names if n >= partition]
        if not names:
            return ArchivePage([], None)
        partition, start = names[0], int(offset or 0) if names[0] == partition else 0
        page = min(limit, 200)
        query: dict[str, Any] = {"offset": start, "limit": page, "includefield": STUDY_UID}
        if span.query:
            query["StudyDate"] = span.query
        found = search(self.rest, self._prefix(partition), **query)
        uids = [text_value(item, STUDY_UID) for item in found]
        keys = [f"{partition}/{uid}" for uid in uids if uid and UID.fullmatch(uid)]
        if len(found) >= page:
            return ArchivePage(keys, f"{partition}|{start + len(found)}")
        return ArchivePage(keys, f"{names[1]}|0" if len(names) > 1 else None)

    def _partition_names(self) -> list[str]:
        if self.partitions is None:
            return [DEFAULT_PARTITION]
        if "*" not in self.partitions:
            return list(self.partitions)
        listed = self.rest.get(f"{self.version}/partitions")
        return [
            str(p["partitionName"])
            for p in (listed if isinstance(listed, list) else [])
            if isinstance(p, dict) and PARTITION_NAME.fullmatch(str(p.get("partitionName", "")))
        ]


def from_settings(settings: SourceSettings, context: SourceContext) -> AzureDicomSource:
    """A DICOM service source, as the registry builds it."""
    return AzureDicomSource.from_context(settings, context)


def check_cursor(settings: SourceSettings, value: str) -> None:
    """A v1 sequence number, or a v2 position (an ISO time, `#<entries to skip>`)."""
    if settings.api_version == "v2":
        parse_v2_cursor(value)
    elif sequence_number(value) is None:
        raise StoredValueError(f"{value[:40]!r} is not a change feed v1 sequence number")
