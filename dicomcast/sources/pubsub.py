"""A Google Cloud Healthcare DICOM store's Pub/Sub notifications, pulled over Pub/Sub's REST
API (`subscriptions.pull` and `subscriptions.acknowledge`; no client library needed).

The store publishes one message per stored (or updated, or deleted) instance. Its `data`
is the instance's resource path, base64-encoded:
`projects/…/dicomStores/…/dicomWeb/studies/STUDY/series/SERIES/instances/INSTANCE`;
newer stores add the UIDs as attributes too (`studyInstanceUID`). Only the study matters
here: the study is then read whole, as any dirty study is.

A pull asks for what is waiting and returns at once (`returnImmediately`; Pub/Sub
discourages it for throughput, but a worker polling every few seconds wants an answer, not
a held request). Acknowledging is the caller's to do once the marks are committed; a
message left unacknowledged comes again after the subscription's ack deadline.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from dicomcast.errors import SourceUnavailable
from dicomcast.http import RetryPolicy
from dicomcast.model import Skipped
from dicomcast.sources.rest import RestReader
from dicomcast.studyview import is_uid

PUBLISHED = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z")
STUDY_IN_PATH = re.compile(r"/dicomWeb/studies/([0-9.]{1,64})(?:/|$)")
MAX_PULL = 1000  # messages one pull may ask for (Pub/Sub returns at most about this many)
MAX_DATA = 4096  # bytes of a message's data worth decoding: a resource path is far shorter


@dataclass(frozen=True)
class Message:
    """One pulled message: its receipt, and the study it names (None: it names none)."""

    ack_id: str
    study_uid: str | None
    published: str
    reason: str = ""  # why it names no study

    @property
    def published_at(self) -> float | None:
        """`publishTime` (RFC 3339, up to nanoseconds) as epoch seconds: the change's
        time, for the sync lag."""
        found = PUBLISHED.fullmatch(self.published)
        if found is None:
            return None
        try:
            moment = dt.datetime.fromisoformat(f"{found.group(1)}{(found.group(2) or '')[:7]}")
        except ValueError:
            return None
        return moment.replace(tzinfo=dt.UTC).timestamp()


class Subscription:
    """One pull subscription, read through `reader` (its client logs in to Pub/Sub)."""

    def __init__(self, http: httpx.Client, name: str, retry: RetryPolicy) -> None:
        self.name = name
        self.reader = RestReader(http, "Pub/Sub", retry)

    def pull(self, limit: int) -> list[Message]:
        body = {"maxMessages": max(1, min(limit, MAX_PULL)), "returnImmediately": True}
        answer = self._post("pull", body)
        received = answer.get("receivedMessages") or []
        if not isinstance(received, list):
            raise SourceUnavailable("Pub/Sub pull answer has no list of receivedMessages")
        return [m for m in (message(r) for r in received) if m is not None]

    def acknowledge(self, ack_ids: Iterable[str]) -> None:
        ids = list(ack_ids)
        for start in range(0, len(ids), MAX_PULL):  # one request holds at most so many
            self._post("acknowledge", {"ackIds": ids[start : start + MAX_PULL]})

    def _post(self, verb: str, body: dict[str, Any]) -> dict[str, Any]:
        path = f"v1/{self.name}:{verb}"

        def once() -> dict[str, Any]:
            response = self.reader.request("POST", path, json=body)
            try:
                answer = response.json() if response.content else {}
            except ValueError:
                raise SourceUnavailable(f"Pub/Sub {verb}: answer is not JSON") from None
            if not isinstance(answer, dict):
                raise SourceUnavailable(f"Pub/Sub {verb}: answer is not a JSON object")
            return answer

        return self.reader.retry.call(once)


def message(received: Any) -> Message | None:
    """The study one received message names; None for what has no receipt at all (it
    cannot even be acknowledged)."""
    if not isinstance(received, dict) or not isinstance(received.get("ackId"), str):
        return None
    ack_id = received["ackId"]
    body = received.get("message")
    body = body if isinstance(body, dict) else {}
    published = str(body.get("publishTime") or "")[:40]
    attributes = body.get("attributes")
    named = attributes.get("studyInstanceUID") if isinstance(attributes, dict) else None
    if isinstance(named, str) and is_uid(named):
        return Message(ack_id, named, published)
    data = body.get("data")
    if not isinstance(data, str) or len(data) > MAX_DATA:
        return Message(ack_id, None, published, "a notification without a resource path")
    try:
        path = base64.b64decode(data, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return Message(ack_id, None, published, "a notification whose data is not base64 text")
    found = STUDY_IN_PATH.search(path)
    if found is None or not is_uid(found.group(1)):
        return Message(ack_id, None, published, "a notification that names no study")
    return Message(ack_id, found.group(1), published)


def skipped(messages: Iterable[Message]) -> list[Skipped]:
    """The messages that name no study, as feed entries that could not be used."""
    return [Skipped(f"pubsub {m.published or '?'}", m.reason) for m in messages if not m.study_uid]
