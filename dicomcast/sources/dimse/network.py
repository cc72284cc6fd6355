"""Associations with one PACS, through pynetdicom: opened, always released, counted.

Every failure to reach the PACS (refused, aborted, no answer in time) is an outage, so the
worker pauses instead of spending studies' attempts; a Failure status to one C-FIND is that
query's own failure. Associations opened and released are counted, so a leak shows.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.association import Association

from dicomcast.config import SourceSettings
from dicomcast.errors import SourceUnavailable

log = logging.getLogger(__name__)
PENDING = (0xFF00, 0xFF01)
VERIFICATION = "1.2.840.10008.1.1"
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND


def no_delay(event: Any) -> None:
    """Send each PDU at once (TCP_NODELAY): DIMSE is a ping-pong of small messages, and
    Nagle's algorithm meeting delayed ACKs costs 40 ms per instance otherwise."""
    transport = getattr(getattr(event.assoc, "dul", None), "socket", None)
    sock = getattr(transport, "socket", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def tls_context(settings: SourceSettings, *, server: bool) -> ssl.SSLContext | None:
    """DICOM TLS (PS3.15 B.1): verify the peer with the CA bundle, show our certificate."""
    if not (settings.tls_ca_bundle or settings.tls_cert):
        return None
    purpose = ssl.Purpose.CLIENT_AUTH if server else ssl.Purpose.SERVER_AUTH
    context = ssl.create_default_context(purpose, cafile=settings.tls_ca_bundle)
    if settings.tls_cert and settings.tls_key:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if server and settings.tls_ca_bundle:
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class Peer:
    """One PACS: where it is, who we are to it, and the associations we had with it."""

    def __init__(self, settings: SourceSettings) -> None:
        self.host, self.port = settings.dicom_address
        self.remote_ae = settings.remote_ae or ""
        self.name = f"{self.remote_ae}@{self.host}:{self.port}"
        self.ae = AE(ae_title=settings.local_ae)
        for timeout in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
            setattr(self.ae, timeout, settings.timeout)
        self.ae.add_requested_context(VERIFICATION)
        self.ae.add_requested_context(FIND_MODEL)
        self.tls = tls_context(settings, server=False)
        self.deadline = settings.find_deadline
        self.max_matches = settings.max_matches
        self.opened = 0
        self.closed = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def association(self) -> Iterator[Association]:
        """An established association, released (or aborted) whatever happens inside."""
        tls_args = (self.tls, self.host) if self.tls else None
        try:
            assoc = self.ae.associate(
                self.host,
                self.port,
                ae_title=self.remote_ae,
                tls_args=tls_args,
                evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)],
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise SourceUnavailable(
                f"PACS {self.name}: cannot connect ({type(exc).__name__})", outage=True
            ) from None
        if not assoc.is_established:
            why = (
                "rejected the association" if assoc.is_rejected else "did not accept an association"
            )
            raise SourceUnavailable(f"PACS {self.name} {why}", outage=True)
        with self._lock:
            self.opened += 1
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()
            if assoc.is_established:  # the release went unanswered
                assoc.abort()
            with self._lock:
                self.closed += 1

    def echo(self) -> None:
        """C-ECHO: the PACS is there and talks to us."""
        with self.association() as assoc:
            status = assoc.send_c_echo()
            if not status or status.Status != 0x0000:
                raise SourceUnavailable(
                    f"PACS {self.name}: C-ECHO failed ({_code(status)})", outage=True
                )

    def find(self, identifier: Dataset) -> list[Dataset]:
        """C-FIND with the Study Root model, on an association of its own: every match, or
        an error naming the status."""
        with self.association() as assoc:
            return self._matches(assoc, identifier)

    def _matches(self, assoc: Association, identifier: Dataset) -> list[Dataset]:
        matches: list[Dataset] = []
        level = identifier.get("QueryRetrieveLevel", "?")
        ends_at = time.monotonic() + self.deadline
        for status, found in assoc.send_c_find(identifier, FIND_MODEL):
            if len(matches) >= self.max_matches or time.monotonic() > ends_at:
                assoc.abort()  # the PACS would go on sending: the association ends here
                if len(matches) >= self.max_matches:
                    raise TooManyMatches(
                        f"PACS {self.name}: a C-FIND at {level} level answered more than "
                        f"{self.max_matches} matches (DICOMCAST_SOURCE_MAX_MATCHES)"
                    )
                raise SourceUnavailable(
                    f"PACS {self.name}: a C-FIND at {level} level was still answering after "
                    f"{self.deadline:g} s (DICOMCAST_SOURCE_FIND_DEADLINE)"
                )
            if not status:
                # No answer in time, or the association dropped: the PACS is away.
                raise SourceUnavailable(f"PACS {self.name}: C-FIND got no answer", outage=True)
            code = status.Status
            if code in PENDING:
                if found is not None:
                    matches.append(found)
            elif code == 0x0000:
                return matches
            else:
                comment = str(status.get("ErrorComment", "")).strip()[:100]
                raise SourceUnavailable(
                    f"PACS {self.name}: C-FIND at {level} level failed with status "
                    f"0x{code:04X}" + (f" ({comment})" if comment else ""),
                    outage=code in (0xA700, 0xA701, 0xA702),  # out of resources
                )
        raise SourceUnavailable(
            f"PACS {self.name}: C-FIND ended without a final status", outage=True
        )

    def close(self) -> None:
        self.ae.shutdown()


class TooManyMatches(SourceUnavailable):
    """A C-FIND answered more than `max_matches`: a listing asks for shorter date ranges."""


def _code(status: Any) -> str:
    return f"status 0x{status.Status:04X}" if status else "no answer"
