"""Every kind of source, named once: the module that builds it and checks its cursors.

A kind's module is imported only when a source of that kind is configured (pynetdicom and
boto3 are heavy, and optional). Each module offers `from_settings(settings, context)`
and `check_cursor(settings, value)`; the assembly (`app.py`) and the operator commands
(`cursor set`) ask here instead of naming kinds themselves. A new kind is its folder and
one line below (and its `kind` value in `config/source.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from dicomcast.config import SourceSettings
from dicomcast.errors import ConfigError, OperatorError
from dicomcast.sources.base import ChangeFeed, Source, SourceContext
from dicomcast.sources.windows import ListedFeed, no_feed


class Kind(Protocol):
    """What a kind's module offers (the module itself satisfies it)."""

    def from_settings(self, settings: SourceSettings, context: SourceContext) -> Source: ...

    def check_cursor(self, settings: SourceSettings, value: str) -> None: ...


def _orthanc() -> Kind:
    from dicomcast.sources import orthanc

    return orthanc


def _azure() -> Kind:
    from dicomcast.sources import azure

    return azure


def _dimse() -> Kind:
    from dicomcast.sources.dimse import source  # pynetdicom: only where a PACS is followed

    return source


def _dicomweb() -> Kind:
    from dicomcast.sources import dicomweb

    return dicomweb


def _healthimaging() -> Kind:
    from dicomcast.sources.healthimaging import source  # boto3: only where it is followed

    return source


# kind -> its module, imported on first use
KINDS: dict[str, Callable[[], Kind]] = {
    "orthanc": _orthanc,
    "azure-dicom": _azure,
    "dimse": _dimse,
    "aws-healthimaging": _healthimaging,
    "dicomweb": _dicomweb,
}


def build(settings: SourceSettings, context: SourceContext) -> Source:
    """A client for one configured source."""
    return _module(settings.kind).from_settings(settings, context)


def check_cursor(settings: SourceSettings, value: str) -> None:
    """Refuse a position this kind's feed cannot start from (`StoredValueError`)."""
    _module(settings.kind).check_cursor(settings, value)


def _module(kind: str) -> Kind:
    found = KINDS.get(kind)
    if found is None:
        raise ConfigError(f"unknown source kind {kind!r} (one of: {', '.join(KINDS)})")
    return found()


def change_feed(source: Source) -> ChangeFeed:
    """The source's change feed, for an operator who moves it; OperatorError, saying what
    to set instead, for a kind followed by listing alone."""
    if isinstance(source, ChangeFeed):
        return source
    following = source.following if isinstance(source, ListedFeed) else "has no change feed"
    raise OperatorError(no_feed(source.name, following))
