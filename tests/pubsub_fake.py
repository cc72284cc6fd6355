"""Google Pub/Sub's REST API as far as a pull subscriber uses it, on a loopback port, built
from its documented wire format (v1 `subscriptions.pull` and `subscriptions.acknowledge`;
errors as Google's JSON error objects), with a Cloud Healthcare DICOM store publishing one
message per stored instance, its data the instance's resource path in base64.

A pulled message is leased until acknowledged; `expire()` ends every lease at once (what
the ack deadline does in time), and a message whose lease ended is delivered again."""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from tests.loopback import Answer, Loopback

STORE = "projects/hospital-imaging/locations/europe-west4/datasets/imaging/dicomStores/main"
SUBSCRIPTION = "projects/hospital-imaging/subscriptions/dicomcast"
VERB = re.compile(r"/v1/(projects/[^/:]+/subscriptions/[^/:]+):(pull|acknowledge)")


@dataclass
class Published:
    message_id: str
    data: str  # base64, as Pub/Sub carries it
    attributes: dict[str, str]
    publish_time: str
    deliveries: int = 0


@dataclass
class PubSubFake(Loopback):
    """One subscription on a DICOM store's topic. `token`: the bearer token it admits."""

    token: str | None = None
    waiting: list[Published] = field(default_factory=list)  # not delivered, or lease ended
    leased: dict[str, Published] = field(default_factory=dict)  # ack ID -> message
    acknowledged: list[str] = field(default_factory=list)  # message IDs, in order
    pulls: int = 0
    down: bool = False  # every request answered 503

    def __post_init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.ids = itertools.count(1)

    # --- what the DICOM store publishes

    def stored(self, datasets: list[Dataset], *, attributes: bool = False) -> None:
        """One notification per instance, as the store sends on storeInstances;
        `attributes`: as newer stores do, with the UIDs as message attributes too."""
        for ds in datasets:
            uids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            path = f"{STORE}/dicomWeb/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}"
            named = {"action": "StoreInstances", "storeName": STORE}
            if attributes:
                named.update(
                    studyInstanceUID=str(uids[0]),
                    seriesInstanceUID=str(uids[1]),
                    sopInstanceUID=str(uids[2]),
                )
            self.publish(path.encode(), named if attributes else {})

    def publish(self, data: bytes, attributes: dict[str, str] | None = None) -> None:
        now = dt.datetime.now(dt.UTC)
        with self.lock:
            self.waiting.append(
                Published(
                    str(next(self.ids)),
                    base64.b64encode(data).decode(),
                    attributes or {},
                    now.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",  # nanoseconds, as Google's
                )
            )

    def expire(self) -> None:
        """Every lease ends (the ack deadline passed): those messages come again."""
        with self.lock:
            self.waiting[:0] = list(self.leased.values())
            self.leased.clear()

    # --- the API

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        if self.down:
            return _error(503, "UNAVAILABLE", "The service is currently unavailable.")
        found = VERB.fullmatch(target)
        if method != "POST" or found is None:
            return _error(404, "NOT_FOUND", "Method not found.")
        if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication.")
        if found.group(1) != SUBSCRIPTION:
            return _error(404, "NOT_FOUND", f"Resource not found (resource={found.group(1)}).")
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if not isinstance(request, dict):
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        with self.lock:
            if found.group(2) == "pull":
                return self._pull(request)
            return self._acknowledge(request)

    def _pull(self, request: dict[str, Any]) -> Answer:
        limit = request.get("maxMessages")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
            return _error(400, "INVALID_ARGUMENT", "max_messages must be positive.")
        self.pulls += 1
        taken, self.waiting = self.waiting[:limit], self.waiting[limit:]
        received = []
        for message in taken:
            message.deliveries += 1
            ack_id = f"ack-{message.message_id}-{message.deliveries}"
            self.leased[ack_id] = message
            body: dict[str, Any] = {
                "data": message.data,
                "messageId": message.message_id,
                "publishTime": message.publish_time,
            }
            if message.attributes:
                body["attributes"] = message.attributes
            received.append({"ackId": ack_id, "message": body})
        return _json(200, {"receivedMessages": received} if received else {})

    def _acknowledge(self, request: dict[str, Any]) -> Answer:
        ids = request.get("ackIds")
        if not isinstance(ids, list) or not ids:
            return _error(400, "INVALID_ARGUMENT", "No ack ids specified.")
        for ack_id in ids:
            message = self.leased.pop(str(ack_id), None)  # an ended lease: silently ignored
            if message is not None:
                self.acknowledged.append(message.message_id)
        return _json(200, {})


def _json(status: int, body: object) -> Answer:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


def _error(status: int, code: str, message: str) -> Answer:
    return _json(status, {"error": {"code": status, "message": message, "status": code}})
