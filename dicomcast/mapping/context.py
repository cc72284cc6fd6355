"""What every converter is given and may raise: shared by the converter modules."""

from __future__ import annotations

import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class ConversionError(ValueError):
    """A DICOM value that cannot become the FHIR value asked for."""


@dataclass
class ConvertContext:
    """What a converter may read besides its value: settings and the lookup tables."""

    config: Mapping[str, Any]
    tables: Mapping[str, Mapping[str, Any]]
    warnings: list[str] = field(default_factory=list)

    def table(self, name: str) -> Mapping[str, Any]:
        return self.tables.get(name, {})

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(str(self.config.get("timezone") or "UTC"))


Converter = Callable[[Any, ConvertContext], Any]
CONVERTERS: dict[str, Converter] = {}


def converter(name: str) -> Callable[[Converter], Converter]:
    """Register a function under the name mapping files call it by (`as: name`)."""

    def register(fn: Converter) -> Converter:
        CONVERTERS[name] = fn
        return fn

    return register
