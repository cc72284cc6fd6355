"""The source registry: every kind is built from its settings through one entry, says it
is that kind, and judges a cursor for its own feed with one error."""

from __future__ import annotations

from typing import Any

import pytest

from dicomcast.config.source import SourceSettings
from dicomcast.errors import ConfigError, StoredValueError
from dicomcast.sources import registry
from dicomcast.sources.base import SourceContext

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
