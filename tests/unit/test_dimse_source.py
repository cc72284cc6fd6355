"""The DIMSE source's own rules, without a PACS: settings, study keys, what C-FIND asks for
at each level (never a value from the data), which listing speaks for which study, the
sweep's pages, and the C-STORE listener's answers to good and bad instances (a real
pynetdicom SCU talking to it on loopback)."""

from __future__ import annotations

import copy
import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from dicomcast.config.source import SourceSettings
from dicomcast.errors import OperatorError, SourceUnavailable, StateUnavailable
from dicomcast.mapping.mapper import Mappings
from dicomcast.mapping.settings import MAPPING_CONFIG_KEYS
from dicomcast.sandbox.samples import demo_studies, instances
from dicomcast.sandbox.servers import free_port
from dicomcast.sources.base import ChangeFeed
from dicomcast.sources.dimse.listener import StoreListener
from dicomcast.sources.dimse.query import Keys, key_parts, study_key
from dicomcast.sources.dimse.source import DimseSource
from dicomcast.sources.registry import change_feed
from tests.tls import self_signed

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def test_settings_say_what_a_dimse_source_needs() -> None:
    query = SourceSettings(kind="dimse", url="dicom://pacs.local:104", remote_ae="PACS")
    assert query.querying and query.dicom_address == ("pacs.local", 104)
    assert query.published_url == ""  # no DICOMweb: no FHIR Endpoint
    push = SourceSettings(kind="dimse", store_port=11112, allowed_aes="CT1, MR1")
    assert not push.querying and push.configured and push.allowed_aes == ["CT1", "MR1"]
    bad: list[dict[str, Any]] = [
        {"url": "http://pacs:104", "remote_ae": "PACS"},  # not dicom://
        {"url": "dicom://pacs:104"},  # no remote AE
        {},  # neither query nor listener
        {"store_port": 1, "allowed_aes": "WAY-TOO-LONG-AE-TITLE"},
        {"store_port": 1, "local_ae": "BACK\\SLASH"},
        {"store_port": 1, "tls_cert": "c.pem"},  # a certificate without its key
    ]
    for values in bad:
        with pytest.raises(ValueError):
            SourceSettings(kind="dimse", **values)


def test_a_study_key_carries_its_date_and_refuses_anything_else() -> None:
    assert study_key("20261130", "1.2.3") == "20261130/1.2.3"
    assert study_key("", "1.2.3") == "-/1.2.3"
    assert study_key("2026", "1.2.3") == "-/1.2.3"  # not a full date: no date
    assert key_parts("20261130/1.2.3") == ("20261130", "1.2.3")
    assert key_parts("-/1.2.3") == (None, "1.2.3")
    for bad in ("1.2.3", "20261130/1.2/../x", "2026113/1.2.3", "20261130/"):
        with pytest.raises(ValueError):
            key_parts(bad)


def test_queries_ask_each_level_for_its_own_attributes_and_never_a_value_from_data() -> None:
    mappings = Mappings.load(None, MAPPING_CONFIG_KEYS)
    keys = Keys(mappings.tags_read(), mappings.item_tags())
    study = keys.study("1.2.3")
    assert study.QueryRetrieveLevel == "STUDY" and study.StudyInstanceUID == "1.2.3"
    assert "PatientName" in study and "SOPInstanceUID" not in study and "Modality" not in study
    series = keys.series("1.2.3")
    assert "Modality" in series and "SOPInstanceUID" not in series
    image = keys.images("1.2.3", "1.2.3.4")
    assert image.SeriesInstanceUID == "1.2.3.4" and "SOPClassUID" in image
    assert "ContentSequence" in image  # dose reports' content, where the PACS has it
    for ds in (study, series, image):
        # Only the UIDs asked about carry a value: no wildcard from the data can widen a query.
        valued = {e.keyword for e in ds if e.value not in (None, "", [])}
        assert valued <= {"QueryRetrieveLevel", "StudyInstanceUID", "SeriesInstanceUID"}
        assert "CodeValue" not in ds and "UniversalEntityID" not in ds  # item-only tags
    window = keys.window(dt.date(2026, 11, 23), dt.date(2026, 11, 30))
    assert window.StudyDate == "20261123-20261130"


def test_a_listing_speaks_only_for_the_dates_it_covered_and_the_sweep_pages_back() -> None:
    clock = [1_000_000.0]
    source = DimseSource(
        SourceSettings(
            kind="dimse",
            url="dicom://127.0.0.1:1",
            remote_ae="PACS",
            lookback_days=7,
            sweep_interval=3600,
        ),
        clock=lambda: clock[0],
        today=lambda: dt.date(2026, 11, 30),
    )
    asked: list[str] = []

    def find(query: Dataset) -> list[Dataset]:
        asked.append(str(query.StudyDate))
        return []

    source._find = find  # type: ignore[method-assign]
    source.list_studies()
    # The window, and the first page of the sweep (the 30 days before the window).
    assert asked == ["20261123-20261130", "20261024-20261122"]
    assert source.covers("20261125/1.2.3") and source.covers("20261101/1.2.3")
    assert not source.covers("20260101/1.2.3") and not source.covers("-/1.2.3")
    source.list_studies()
    assert asked[-1] == "20260924-20261023"  # the next page, one per poll
    assert not source.covers("20261101/1.2.3")  # that page is done with


class Sink:
    def __init__(self) -> None:
        self.got: list[tuple[str, str, dict[str, Any]]] = []
        self.fail = False

    def receive(
        self, source: str, key: str, study_uid: str, sop_uid: str, header: dict[str, Any]
    ) -> None:
        if self.fail:
            raise StateUnavailable("the state DB is down")
        self.got.append((key, sop_uid, header))


def send(port: int, datasets: list[Dataset], calling: str = "MODALITY") -> list[int]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(CT_IMAGE)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMCAST")
    assert assoc.is_established
    try:
        return [assoc.send_c_store(ds).Status for ds in datasets]
    finally:
        assoc.release()


def test_the_listener_stores_headers_refuses_what_has_no_uids_and_keeps_serving() -> None:
    port = free_port()
    sink = Sink()
    answers: list[str] = []
    listener = StoreListener(SourceSettings(kind="dimse", store_port=port), sink, answers.append)
    listener.start()
    try:
        good = [ds for ds in instances(demo_studies()[3])][:2]  # CT: pixel data and all
        broken = copy.deepcopy(good[0])
        del broken.StudyInstanceUID
        statuses = send(port, [good[0], broken, good[1]])
        assert statuses == [0x0000, 0xC000, 0x0000]
        assert [sop for _, sop, _ in sink.got] == [good[0].SOPInstanceUID, good[1].SOPInstanceUID]
        key, _, header = sink.got[0]
        assert key == f"{good[0].StudyDate}/{good[0].StudyInstanceUID}"
        assert "7FE00010" not in header  # pixel data is never kept
        assert header["00100020"]["Value"] == [good[0].PatientID]
        # The state DB fails: the sender hears Out of Resources, and may send again.
        sink.fail = True
        assert send(port, [good[0]]) == [0xA700]
        assert answers == ["stored", "refused", "stored", "unavailable"]  # the metric's counts
    finally:
        listener.stop()


def misbehaving_pacs(port: int, answer: Any, *, callers: list[str] | None = None) -> Any:
    """A real C-FIND SCP (pynetdicom) that answers as `answer(identifier)` yields."""
    ae = AE(ae_title="BADPACS")
    ae.add_supported_context("1.2.840.10008.5.1.4.1.2.2.1")
    ae.add_supported_context("1.2.840.10008.1.1")
    if callers:
        ae.require_calling_aet = callers

    def on_find(event: Any) -> Any:
        yield from answer(event.identifier)

    return ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)]
    )


def peer_of(port: int, timeout: float = 5.0) -> DimseSource:
    return DimseSource(
        SourceSettings(
            kind="dimse",
            url=f"dicom://127.0.0.1:{port}",
            remote_ae="BADPACS",
            timeout=timeout,
            sweep_interval=0,
        )
    )


def test_a_pacs_that_fails_refuses_or_stalls_gives_a_reason_and_releases_associations() -> None:
    port = free_port()
    match = Dataset()
    match.StudyInstanceUID, match.StudyDate = "1.2.3", "20261130"
    match.NumberOfStudyRelatedInstances = "1"

    def pending_then_failure(identifier: Dataset) -> Any:
        yield 0xFF00, match
        yield 0xC001, None

    server = misbehaving_pacs(port, pending_then_failure)
    source = peer_of(port)
    try:
        with pytest.raises(SourceUnavailable, match="failed with status 0xC001") as failed:
            source.list_studies()
        assert not failed.value.outage  # a query's own failure, not the PACS away
    finally:
        server.shutdown()

    def stall(identifier: Dataset) -> Any:
        time.sleep(3)
        yield 0x0000, None

    server = misbehaving_pacs(port, stall)
    slow = peer_of(port, timeout=1)
    try:
        with pytest.raises(SourceUnavailable, match="no answer") as stalled:
            slow.list_studies()
        assert stalled.value.outage
    finally:
        server.shutdown()

    server = misbehaving_pacs(port, pending_then_failure, callers=["SOMEONE"])
    try:
        with pytest.raises(SourceUnavailable, match="rejected the association") as refused:
            source.list_studies()
        assert refused.value.outage
    finally:
        server.shutdown()
    for each in (source, slow):
        assert each.peer is not None and each.peer.opened == each.peer.closed
        each.close()


def test_dicom_tls_is_mutual_and_a_plain_peer_is_not_let_in(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "dicom")
    port = free_port()
    tls = {"tls_ca_bundle": str(cert), "tls_cert": str(cert), "tls_key": str(key)}
    address = {"url": f"dicom://127.0.0.1:{port}", "remote_ae": "DICOMCAST"}
    listener = StoreListener(SourceSettings(kind="dimse", store_port=port, **tls), Sink())
    listener.start()
    secure = DimseSource(SourceSettings(kind="dimse", timeout=5, **address, **tls))
    plain = DimseSource(SourceSettings(kind="dimse", timeout=5, **address))
    try:
        assert "answers C-ECHO" in secure.check()  # both sides show and check certificates
        with pytest.raises(SourceUnavailable):
            plain.check()
    finally:
        listener.stop()
        secure.close()
        plain.close()


def test_a_dimse_source_has_no_feed_head_to_start_from() -> None:
    source = DimseSource(SourceSettings(kind="dimse", store_port=11112))
    assert not isinstance(source, ChangeFeed)
    with pytest.raises(OperatorError, match="lookback_days"):
        change_feed(source).head()
