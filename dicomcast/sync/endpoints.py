"""The FHIR Endpoint of each place studies are retrieved from: found or created once per
worker, then referenced by every ImagingStudy synced from there."""

from __future__ import annotations

import logging
import threading

from dicomcast.errors import FhirConflict
from dicomcast.fhir.upsert import FhirWriter
from dicomcast.mapping.mapper import Mappings, search_token
from dicomcast.mapping.settings import MappingConfigs
from dicomcast.model import StudyLocation
from dicomcast.state.locks import StudyLocks

log = logging.getLogger(__name__)


class Endpoints:
    """Endpoint address -> `Endpoint/{id}`, filled on first use (a few per worker)."""

    def __init__(
        self,
        mappings: Mappings,
        writer: FhirWriter,
        configs: MappingConfigs,
        locks: StudyLocks | None = None,
    ) -> None:
        self.mappings = mappings
        self.writer = writer
        self.configs = configs
        # Workers starting together must not each create the Endpoint (a server's
        # conditional create need not be atomic): they take turns, as a study's writes do.
        self.locks = locks or StudyLocks(None)
        self.known: dict[str, str] = {}
        self._lock = threading.Lock()

    def ref(self, source: str, location: StudyLocation) -> str | None:
        """The Endpoint reference of a location; one FHIR round trip the first time. None
        for a location with no address (a DIMSE-only PACS: FHIR has no Endpoint for it)."""
        if not location.address:
            return None
        ref = self.known.get(location.address)
        if ref is None:
            with self._lock:
                ref = self.known.get(location.address)
                if ref is None:
                    config = self.configs.of(source, location)
                    endpoint = self.mappings.map_endpoint(config, validate=False)
                    with self.locks.hold(f"Endpoint {search_token(endpoint)}") as held:
                        if not held:
                            raise FhirConflict("another worker is writing this Endpoint")
                        ref = self.writer.ensure_endpoint(endpoint, self.mappings.check_endpoint)
                    self.known[location.address] = ref
                    log.info("endpoint ready", extra={"source": source, "endpoint": ref})
        return ref
