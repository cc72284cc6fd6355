"""The benchmark's data: realistic studies made with pydicom, and loading them into Orthanc."""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from dicomcast.sandbox.samples import StudySpec, bulk_studies, instances, to_bytes
from dicomcast.sandbox.servers import OrthancServer


@dataclass(frozen=True)
class Workload:
    name: str
    studies: list[StudySpec]

    @property
    def instances(self) -> int:
        return sum(s.instance_count for s in self.studies)


def large_studies(count: int, size: int, prefix: str) -> list[StudySpec]:
    """Studies of `size` instances in four series, as a CT with reconstructions would be."""
    return bulk_studies(count, size, patients=max(1, count), prefix=f"{prefix}-large", series=4)


def workload(name: str, studies: int, per_study: int, large: int = 0) -> Workload:
    specs = bulk_studies(studies, per_study, patients=max(1, studies // 4), prefix=name)
    return Workload(name, specs + large_studies(large, 1000, name))


def upload(orthanc: OrthancServer, specs: Iterable[StudySpec], threads: int = 4) -> None:
    """Store every instance through Orthanc's REST API, a few requests at a time."""

    def store(spec: StudySpec) -> None:
        with httpx.Client(base_url=orthanc.url, timeout=120) as http:
            for ds in instances(spec):
                payload = to_bytes(ds)
                for attempt in range(5):  # Orthanc 1.10 now and then answers 500 under load
                    response = http.post(
                        "/instances",
                        content=payload,
                        headers={"Content-Type": "application/dicom"},
                    )
                    if response.status_code < 500 or attempt == 4:
                        break
                    time.sleep(0.2 * (attempt + 1))
                response.raise_for_status()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(store, specs))
