"""What a mapping file may read with `config:`: a few settings, never a secret, with one
source's overrides and one study location's Endpoint applied; cached per location."""

from __future__ import annotations

import threading
from typing import Any

from dicomcast.config import Settings, SourceSettings
from dicomcast.mapping.mapper import Mappings
from dicomcast.model import StudyLocation

MAPPING_CONFIG_KEYS = {
    "patient_id_system",
    "accession_system",
    "issuer_systems",
    "unknown_issuer",
    "issuer_system_base",
    "timezone",
    "source_name",
    "source_public_url",
}


def mapping_config(
    settings: Settings,
    source: SourceSettings | None = None,
    location: StudyLocation | None = None,
) -> dict[str, Any]:
    """The settings a mapping file may read with `config:`; never a secret. With a source
    and a study's location: that source's overrides and that study's Endpoint."""
    flat = settings.source
    public_url = flat.public_url if flat else None
    if public_url is None and flat and flat.url and not settings.sources:
        public_url = flat.published_url
    config = {
        "patient_id_system": settings.patient_id_system,
        "accession_system": settings.accession_system,
        "issuer_systems": dict(settings.issuer_systems),
        "unknown_issuer": settings.unknown_issuer,
        "issuer_system_base": settings.issuer_system_base,
        "timezone": settings.timezone,
        "source_name": flat.name if flat else "default",
        "source_public_url": public_url,
    }
    if source is not None:
        config["source_name"] = source.name
        config["source_public_url"] = source.published_url
        for key in ("patient_id_system", "accession_system"):
            if getattr(source, key):
                config[key] = getattr(source, key)
    if location is not None:
        config["source_name"] = location.endpoint_name
        config["source_public_url"] = location.address
    return config


def load_mappings(settings: Settings) -> Mappings:
    return Mappings.load(
        settings.mapping_dir, MAPPING_CONFIG_KEYS, per_instance=settings.dose_observations
    )


class MappingConfigs:
    """The mapping config of each (source, location): computed once, few in number."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sources = {s.name: s for s in settings.source_list()}
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def of(self, source: str, location: StudyLocation) -> dict[str, Any]:
        key = (source, location.address)
        config = self._cache.get(key)
        if config is None:
            config = mapping_config(self.settings, self.sources.get(source), location)
            with self._lock:
                self._cache[key] = config
        return config
