"""The listener's association server: pynetdicom's, with what a port open to a network needs.

- The TLS handshake runs on the connection's own thread, bounded by the source's
  timeout; in pynetdicom it runs in the accept loop, where one silent client blocks
  every other association.
- A PDU longer than this listener can use is refused before it is read (pynetdicom reads
  any declared length into memory, before the calling AE title is even checked).
- Each dataset is collected by `HeaderBuffer`: its bulk data is dropped while it streams.
- Connections are bounded per address and associations per calling AE title, inside
  the global bound, with a listen backlog for bursts.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
from collections import Counter
from typing import Any

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicomcast.sources.dimse.stream import HeaderBuffer

log = logging.getLogger(__name__)
MAX_ASSOCIATIONS = 32
PER_ADDRESS = 16  # connections from one address at once
PER_AE = 8  # associations of one calling AE title at once
BACKLOG = 64
MAX_HEADER_BYTES = 32 * 2**20  # an instance's header without its bulk data
MAX_PDU = 2**16  # the largest P-DATA-TF this listener asks senders for
# The largest PDU read at all: room for an association request proposing 128 contexts
# with every transfer syntax, and for a sender that ignores MAX_PDU within reason.
MAX_PDU_READ = 2**20


class _HeaderOnlyDimse(DIMSEServiceProvider):
    """Collects each message's dataset in a `HeaderBuffer` for its transfer syntax."""

    def receive_primitive(self, primitive: Any) -> None:
        if self.message is None and primitive.presentation_data_value_list:
            context_id = primitive.presentation_data_value_list[0][0]
            syntaxes = {c.context_id: c.transfer_syntax for c in self.assoc.accepted_contexts}
            syntax = next(iter(syntaxes.get(context_id) or ()), "")
            self.message = DIMSEMessage()
            self.message.data_set = HeaderBuffer(str(syntax), MAX_HEADER_BYTES)
        super().receive_primitive(primitive)


class _BoundedSocket(AssociationSocket):
    """Refuses to read a PDU longer than `MAX_PDU_READ`: the connection is closed."""

    def recv(self, nr_bytes: int) -> bytearray:
        if nr_bytes > MAX_PDU_READ:
            log.warning(
                "closed a connection that announced a PDU of %d bytes (at most %d are read)",
                nr_bytes,
                MAX_PDU_READ,
            )
            self.close()
            return bytearray()
        return super().recv(nr_bytes)


class _Handler(RequestHandler):
    def _create_association(self) -> Any:
        assoc = super()._create_association()
        # Both classes only override methods; their state is pynetdicom's own.
        assoc.dul.socket.__class__ = _BoundedSocket
        assoc.dimse.__class__ = _HeaderOnlyDimse
        return assoc


class ListenerServer(ThreadedAssociationServer):
    """Started by `StoreListener` through `AE.make_server(server_class=...)`."""

    request_queue_size = BACKLOG

    def __init__(
        self,
        ae: Any,
        address: tuple[str, int],
        ae_title: str,
        contexts: list[Any],
        ssl_context: ssl.SSLContext | None = None,
        evt_handlers: list[Any] | None = None,
    ) -> None:
        self.handshake_timeout = 30.0
        self._tls = ssl_context  # used on the connection's thread, not by get_request
        self._connections: Counter[str] = Counter()
        self._lock = threading.Lock()
        super().__init__(
            ae, address, ae_title, contexts, None, evt_handlers, request_handler=_Handler
        )

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        with self._lock:
            if self._connections[host] >= PER_ADDRESS:
                log.warning(
                    "refused a connection from %s: %d connections from it are open",
                    host,
                    PER_ADDRESS,
                )
                return False
            self._connections[host] += 1
        return True

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        try:
            if self._tls is not None:
                request = self._handshake(request, host)
            if request is not None:
                super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._connections[host] -= 1
                if self._connections[host] <= 0:
                    del self._connections[host]

    def _handshake(self, raw: socket.socket, host: str) -> ssl.SSLSocket | None:
        assert self._tls is not None
        raw.settimeout(self.handshake_timeout)
        try:
            wrapped = self._tls.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.warning("a TLS handshake from %s failed: %s", host, type(exc).__name__)
            raw.close()
            return None
        wrapped.settimeout(None)  # pynetdicom polls with select from here on
        return wrapped

    def shutdown(self) -> None:
        """Stop serving and close the port (it was never in the AE's own server list)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only: the handshake is the connection thread's (`process_request_thread`)."""
        assert self.socket is not None
        client, address = self.socket.accept()
        return client, address


def too_many_from(assoc: Any) -> bool:
    """Whether this association's calling AE title already has `PER_AE` others open."""
    server = getattr(assoc, "_server", None)
    if server is None:
        return False
    calling = str(assoc.requestor.ae_title).strip()
    same = [
        a
        for a in server.active_associations
        if a is not assoc and a.is_established and str(a.requestor.ae_title).strip() == calling
    ]
    return len(same) >= PER_AE
