"""The C-STORE listener against senders that misbehave on purpose: a silent TLS client, a
PDU that announces a gigabyte, a dataset cut short, one AE title opening association after
association. Real pynetdicom and raw sockets on loopback; each test waits on states."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest
from pydicom import dcmwrite
from pynetdicom import AE, _config

from dicomcast.config.source import SourceSettings
from dicomcast.sandbox.samples import demo_studies, instances
from dicomcast.sandbox.servers import free_port
from dicomcast.sources.dimse.listener import StoreListener, exposure
from dicomcast.sources.dimse.network import tls_context
from dicomcast.sources.dimse.server import MAX_PDU_READ, PER_AE
from dicomcast.sources.dimse.source import DimseSource
from tests.tls import self_signed
from tests.unit.test_dimse_source import CT_IMAGE, Sink, send


def until(condition: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.02)
    return False


def test_a_silent_connection_does_not_hold_up_tls_associations(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "dicom")
    port = free_port()
    tls = {"tls_ca_bundle": str(cert), "tls_cert": str(cert), "tls_key": str(key)}
    listener = StoreListener(
        SourceSettings(kind="dimse", store_port=port, timeout=3, **tls), Sink()
    )
    listener.start()
    secure = DimseSource(
        SourceSettings(
            kind="dimse",
            url=f"dicom://127.0.0.1:{port}",
            remote_ae="DICOMCAST",
            timeout=2,
            **tls,
        )
    )
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        # On pynetdicom's own server the handshake of the first silent connection
        # blocks the accept loop: this C-ECHO would get no answer within its 2 s.
        assert "answers C-ECHO" in secure.check()
        # The silent ones are dropped once the handshake timeout passes.
        silent[0].settimeout(10)
        assert silent[0].recv(1) == b""
    finally:
        for sock in silent:
            sock.close()
        listener.stop()
        secure.close()


def test_a_pdu_announcing_a_gigabyte_is_refused_before_it_is_read() -> None:
    port = free_port()
    listener = StoreListener(SourceSettings(kind="dimse", store_port=port), Sink())
    listener.start()
    sent = 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(struct.pack(">BBL", 0x01, 0, 2**30))  # an A-ASSOCIATE-RQ of 1 GiB
            chunk = bytes(2**16)
            with pytest.raises(OSError):
                while sent < 2**30:
                    sock.sendall(chunk)
                    sent += len(chunk)
                    if sent > 64 * MAX_PDU_READ:
                        break
                raise OSError("not closed")  # pragma: no cover - fails the test
            assert sent < 16 * MAX_PDU_READ  # closed long before: only socket buffers filled
        assert send(port, [next(iter(instances(demo_studies()[3])))]) == [0x0000]  # still serving
    finally:
        listener.stop()


def test_a_dataset_cut_short_is_refused_and_nothing_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    sink = Sink()
    answers: list[str] = []
    listener = StoreListener(SourceSettings(kind="dimse", store_port=port), sink, answers.append)
    listener.start()
    ds = next(iter(instances(demo_studies()[3])))
    whole = tmp_path / "whole.dcm"
    dcmwrite(whole, ds, enforce_file_format=True)
    data = whole.read_bytes()
    # Sent from the file as it is, byte for byte (pynetdicom's documented option).
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    try:
        for cut in (1, 7, 301):
            cut_file = tmp_path / f"cut{cut}.dcm"
            cut_file.write_bytes(data[:-cut])
            assert _store_file(port, cut_file) == 0xC000
        assert sink.got == [] and answers == ["refused"] * 3
        assert _store_file(port, whole) == 0x0000
        assert len(sink.got) == 1
    finally:
        listener.stop()


def _store_file(port: int, path: Path) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CT_IMAGE, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMCAST")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


def test_one_ae_title_cannot_take_every_association() -> None:
    port = free_port()
    listener = StoreListener(SourceSettings(kind="dimse", store_port=port), Sink())
    listener.start()
    held = []
    try:
        ae = AE(ae_title="GREEDY")
        ae.add_requested_context(CT_IMAGE)
        for _ in range(PER_AE):
            assoc = ae.associate("127.0.0.1", port, ae_title="DICOMCAST")
            assert assoc.is_established
            held.append(assoc)
        extra = ae.associate("127.0.0.1", port, ae_title="DICOMCAST")
        held.append(extra)
        assert until(lambda: extra.is_aborted)
        assert all(a.is_established for a in held[:PER_AE])
        # Another sender is not held up by the greedy one.
        assert send(port, [next(iter(instances(demo_studies()[3])))], calling="OTHER") == [0x0000]
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()
        listener.stop()


def test_a_listener_open_beyond_loopback_without_client_certificates_is_warned_of(
    tmp_path: Path,
) -> None:
    assert exposure("127.0.0.1", frozenset(), None) is None
    assert exposure("::1", frozenset(), None) is None
    assert "any calling AE title" in str(exposure("0.0.0.0", frozenset(), None))
    named = str(exposure("10.0.0.5", frozenset({"CT1"}), None))
    assert "a name the caller gives itself" in named and "docs/security.md" in named
    cert, key = self_signed(tmp_path, "dicom")
    mutual = tls_context(
        SourceSettings(
            kind="dimse",
            store_port=1,
            tls_ca_bundle=str(cert),
            tls_cert=str(cert),
            tls_key=str(key),
        ),
        server=True,
    )
    assert exposure("0.0.0.0", frozenset(), mutual) is None  # certificates are checked
