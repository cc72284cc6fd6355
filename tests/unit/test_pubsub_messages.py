"""What a Pub/Sub notification says: the study in its resource path or its attributes, or
why it says nothing usable (recorded, acknowledged, never retried); and the settings that
name a subscription."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

import pytest

from dicomcast.config.source import SourceSettings
from dicomcast.sources.pubsub import MAX_DATA, message

STUDY = "1.2.826.0.1.3680043.8.498.1"
STORE = "projects/p/locations/l/datasets/d/dicomStores/s"
PATH = f"{STORE}/dicomWeb/studies/{STUDY}/series/1.2/instances/1.3"


def received(data: Any = None, **extra: Any) -> dict[str, Any]:
    body = {"messageId": "7", "publishTime": "2026-12-08T01:02:03.123456789Z", **extra}
    if data is not None:
        body["data"] = data
    return {"ackId": "a1", "message": body}


def encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_study_is_read_from_the_resource_path_or_the_attributes() -> None:
    by_path = message(received(encoded(PATH)))
    assert by_path is not None and by_path.study_uid == STUDY
    published = dt.datetime(2026, 12, 8, 1, 2, 3, 123456, tzinfo=dt.UTC)
    assert by_path.published_at == pytest.approx(published.timestamp())
    by_attribute = message(received(attributes={"studyInstanceUID": STUDY}))
    assert by_attribute is not None and by_attribute.study_uid == STUDY


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "without a resource path"),
        (encoded("projects/p/dicomStores/s"), "names no study"),
        (encoded("x/dicomWeb/studies/1.2.3abc/series"), "names no study"),
        (encoded("x/dicomWeb/studies/" + "1." * 40 + "1"), "names no study"),  # past 64
        ("%%% not base64", "not base64 text"),
        (base64.b64encode(b"\xff\xfe").decode(), "not base64 text"),
        ("A" * (MAX_DATA + 4), "without a resource path"),
        (12, "without a resource path"),
    ],
)
def test_a_notification_that_names_no_study_says_why(data: Any, reason: str) -> None:
    found = message(received(data))
    assert found is not None and found.study_uid is None and reason in found.reason
    assert found.ack_id == "a1"  # acknowledged all the same: never pulled again


@pytest.mark.parametrize("junk", [None, [], "x", {"message": {}}, {"ackId": 3}])
def test_what_has_no_receipt_is_dropped(junk: Any) -> None:
    assert message(junk) is None


def test_a_subscription_is_a_dicomweb_sources_and_named_as_pubsub_names_them() -> None:
    good = "projects/hospital-imaging/subscriptions/dicomcast"
    SourceSettings(kind="dicomweb", url="https://x.test", pubsub_subscription=good)
    with pytest.raises(ValueError, match="for kind dicomweb"):
        SourceSettings(kind="orthanc", url="https://x.test", pubsub_subscription=good)
    for bad in ("dicomcast", "projects/p/topics/t", f"{good}/../x", "projects/P/subscriptions/s"):
        with pytest.raises(ValueError, match="projects/PROJECT/subscriptions/SUBSCRIPTION"):
            SourceSettings(kind="dicomweb", url="https://x.test", pubsub_subscription=bad)
    with pytest.raises(ValueError, match="must not carry credentials"):
        SourceSettings(
            kind="dicomweb",
            url="https://x.test",
            pubsub_subscription=good,
            pubsub_url="https://user:pw@pubsub.test",
        )
