"""The source registry: every kind is built from its settings through one entry, says it
is that kind, and judges a cursor for its own feed with one error."""

from __future__ import annotations

from typing import Any, get_args

import pytest

from dicomcast.config.source import SourceKind, SourceSettings
from dicomcast.errors import ConfigError, StoredValueError
from dicomcast.sources import registry
from dicomcast.sources.base import (
    ArchiveListing,
    ChangeFeed,
    SourceContext,
    StudyListing,
    listing_is_feed,
    logs_deletes,
)

SETTINGS: dict[str, dict[str, Any]] = {
    "orthanc": {"url": "http://orthanc.test"},
    "azure-dicom": {"url": "https://dicom.test", "token": "t"},
    "dimse": {"url": "dicom://pacs.test:104", "remote_ae": "PACS"},
    "aws-healthimaging": {"datastore_id": "0" * 32, "region": "eu-west-1"},
    "dicomweb": {"url": "https://pacs.test/dicom-web"},
}


@pytest.mark.parametrize("kind", sorted(registry.KINDS))
def test_every_kind_is_built_through_the_registry_and_says_its_kind(kind: str) -> None:
    settings = SourceSettings(kind=kind, **SETTINGS[kind])
    source = registry.build(settings, SourceContext())
    try:
        assert source.kind == kind and source.name == settings.name
    finally:
        source.close()


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("orthanc", "42", "²"),
        ("azure-dicom", "2026-12-01T00:00:00.1234567Z#3", "42"),  # v2 by default
        ("aws-healthimaging", "2026-12-01T00:00:00Z", "yesterday"),
        ("dimse", None, "42"),  # no change feed to move at all
        ("dicomweb", None, "42"),
    ],
)
def test_each_kind_judges_a_cursor_with_one_error(kind: str, good: str | None, bad: str) -> None:
    settings = SourceSettings(kind=kind, **SETTINGS[kind])
    if good is not None:
        registry.check_cursor(settings, good)
    with pytest.raises(StoredValueError):
        registry.check_cursor(settings, bad)


def test_an_unknown_kind_names_the_known_ones() -> None:
    settings = SourceSettings(kind="orthanc", url="http://o.test")
    object.__setattr__(settings, "kind", "pacs-9000")
    with pytest.raises(ConfigError, match="orthanc, azure-dicom, dimse, aws-healthimaging"):
        registry.build(settings, SourceContext())


def test_the_settings_accept_exactly_the_kinds_the_registry_builds() -> None:
    assert set(get_args(SourceKind)) == set(registry.KINDS)


@pytest.mark.parametrize("kind", sorted(registry.KINDS))
def test_a_kind_declares_its_abilities_by_what_its_class_implements(kind: str) -> None:
    """No flags and no methods that only raise: a kind is followed by a feed, a listing,
    or both (a listing beside a feed is the reconcile scan of a feed that logs no
    deletions); every kind can list its archive for a backfill."""
    source = registry.build(SourceSettings(kind=kind, **SETTINGS[kind]), SourceContext())
    try:
        assert isinstance(source, (ChangeFeed, StudyListing)) and isinstance(source, ArchiveListing)
        for flag in ("logs_deletes", "lists_changes", "keep_tags", "observe"):
            assert not hasattr(source, flag)
        assert logs_deletes(source) == (kind == "azure-dicom")
        assert listing_is_feed(source) == (kind in ("dimse", "dicomweb"))
    finally:
        source.close()
