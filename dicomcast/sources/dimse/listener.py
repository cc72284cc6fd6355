"""The C-STORE listener: a PACS routing rule or a modality sends copies of its instances,
dicomcast keeps each header (pixel data dropped on arrival, never written anywhere), and
answers Success only after the header and the study's dirty mark are committed to the
state DB. A crash between receipt and commit leaves the sender without Success: it sends
again. An instance without usable UIDs is refused with a status; the listener goes on.
A calling AE title not on the allow-list gets an A-ASSOCIATE-RJ, logged with its address.
A dataset cut short, or whose header alone is past the limit, is refused and nothing of it
stored. The server underneath (`server.py`) bounds connections, PDUs and handshakes.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any, Protocol

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from dicomcast.config import SourceSettings
from dicomcast.errors import StateUnavailable
from dicomcast.sources.dimse.network import VERIFICATION, no_delay, tls_context
from dicomcast.sources.dimse.query import study_key
from dicomcast.sources.dimse.server import (
    MAX_ASSOCIATIONS,
    MAX_PDU,
    PER_AE,
    ListenerServer,
    too_many_from,
)
from dicomcast.sources.dimse.stream import BULK, HeaderBuffer
from dicomcast.sources.files import dataset_to_json
from dicomcast.studyview import is_uid

log = logging.getLogger(__name__)
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # the state DB failed: the sender should try again later
CANNOT_UNDERSTAND = 0xC000


def exposure(host: str, allowed: frozenset[str], tls: ssl.SSLContext | None) -> str | None:
    """What a security review should hear about where this listener is reachable: on an
    address other than loopback, anyone who can connect may push studies unless DICOM
    TLS checks their certificates; an AE title is a name the caller gives itself."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback or (tls is not None and tls.verify_mode == ssl.CERT_REQUIRED):
        return None
    who = (
        "any calling AE title"
        if not allowed
        else "anyone naming an allowed AE title (a name the caller gives itself)"
    )
    return (
        f"the C-STORE listener on {host} accepts studies from {who}: require client "
        "certificates (SOURCE_TLS_CA_BUNDLE with SOURCE_TLS_CERT/KEY) or let only the "
        "PACS reach the port (a network policy); see docs/security.md"
    )


class HeaderSink(Protocol):
    """Where received headers go: stored, and their study marked dirty, in one commit."""

    def receive(
        self, source: str, key: str, study_uid: str, sop_uid: str, header: dict[str, Any]
    ) -> None: ...


class StoreListener:
    """A Storage SCP for every storage SOP class and transfer syntax pynetdicom knows."""

    def __init__(
        self,
        settings: SourceSettings,
        sink: HeaderSink,
        count: Callable[[str], None] | None = None,
    ) -> None:
        assert settings.store_port is not None
        self.name = settings.name
        self.address = (settings.store_host, settings.store_port)
        self.sink = sink
        self.count = count or (lambda outcome: None)  # told each answer: metrics
        self.allowed = frozenset(settings.allowed_aes or ())
        self.ae = AE(ae_title=settings.local_ae)
        self.ae.maximum_associations = MAX_ASSOCIATIONS
        self.ae.maximum_pdu_size = MAX_PDU
        self.ae.network_timeout = self.ae.dimse_timeout = settings.timeout
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                self.ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.ae.add_supported_context(VERIFICATION)
        if self.allowed:
            self.ae.require_calling_aet = sorted(self.allowed)
        self.ssl = tls_context(settings, server=True)
        self.timeout = settings.timeout
        self.server: Any = None

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, no_delay),
            (evt.EVT_C_STORE, self._store),
            (evt.EVT_REJECTED, self._rejected),
            (evt.EVT_ESTABLISHED, self._established),
        ]
        server = self.ae.make_server(
            self.address, evt_handlers=handlers, ssl_context=self.ssl, server_class=ListenerServer
        )
        assert isinstance(server, ListenerServer)
        server.handshake_timeout = self.timeout
        thread = threading.Thread(
            target=server.serve_forever, name=f"listener-{self.name}", daemon=True
        )
        thread.start()
        self.server = server
        log.info(
            "C-STORE listener up",
            extra={"source": self.name, "host": self.address[0], "port": self.address[1]},
        )
        if warning := exposure(self.address[0], self.allowed, self.ssl):
            log.warning(warning, extra={"source": self.name, "host": self.address[0]})

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        # An AE title names a device, never a patient: logged as it came (in a field,
        # so the quoted-value masking of messages leaves it readable).
        log.warning(
            "refused an association from %s:%s: its calling AE title is not in allowed_aes",
            requestor.address,
            requestor.port,
            extra={"source": self.name, "calling_ae": str(requestor.ae_title).strip()},
        )

    def _established(self, event: Any) -> None:
        if too_many_from(event.assoc):
            log.warning(
                "aborted an association: its calling AE title has %d others open",
                PER_AE,
                extra={"source": self.name, "calling_ae": str(event.assoc.requestor.ae_title)},
            )
            event.assoc.abort()

    def _store(self, event: Any) -> int:
        received = getattr(event.request, "DataSet", None)
        if isinstance(received, HeaderBuffer):
            if received.overflow:
                return self._refuse("its header without bulk data is larger than the limit")
            if received.truncated:
                return self._refuse("the dataset ends inside an element (truncated)")
        try:
            ds: Dataset = event.dataset
            for tag in BULK:
                ds.pop(tag, None)
            header, notes = dataset_to_json(ds)
            study_uid = str(ds.get("StudyInstanceUID", "")).strip()
            sop_uid = str(ds.get("SOPInstanceUID", "")).strip()
            date = str(ds.get("StudyDate", "")).strip()
        except Exception as exc:  # noqa: BLE001 - a malformed dataset raises many kinds
            return self._refuse(f"the dataset cannot be read ({type(exc).__name__})")
        if not is_uid(study_uid) or not is_uid(sop_uid):
            which = "StudyInstanceUID" if not is_uid(study_uid) else "SOPInstanceUID"
            return self._refuse(f"no valid {which}")
        try:
            self.sink.receive(self.name, study_key(date, study_uid), study_uid, sop_uid, header)
        except StateUnavailable as exc:
            log.warning("could not store a received instance: %s", exc, extra={"source": self.name})
            self.count("unavailable")
            return OUT_OF_RESOURCES
        self.count("stored")
        if notes:
            log.info(
                "received an instance with invalid elements dropped", extra={"source": self.name}
            )
        return SUCCESS

    def _refuse(self, reason: str) -> int:
        self.count("refused")
        log.warning("refused a received instance: %s", reason, extra={"source": self.name})
        return CANNOT_UNDERSTAND
