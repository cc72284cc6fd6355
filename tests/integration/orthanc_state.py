"""What the tests wait for in Orthanc before they read its feed."""

from __future__ import annotations

import time

from dicomcast.sandbox.servers import OrthancServer


def settle(orthanc: OrthancServer, timeout: float = 30) -> None:
    """Wait until Orthanc called every study stable (its feed logs nothing more of them):
    a run that starts after this reads each study's whole history in one go."""
    deadline = time.monotonic() + timeout
    with orthanc.client() as http:
        while time.monotonic() < deadline:
            studies = http.get("/studies", params={"expand": ""}).json()
            if all(study.get("IsStable") for study in studies):
                return
            time.sleep(0.2)
    raise AssertionError("Orthanc never called the studies stable")
