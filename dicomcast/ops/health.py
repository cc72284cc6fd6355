"""Liveness and readiness, as the HTTP listener and `check-config` report them.

Live: the worker's loop made progress recently (a hung loop gets the process restarted).
Ready: the state DB, the DICOM server and the FHIR server all answer a quick probe now.
Not ready is not dead: the worker keeps running and catches up once the server returns.

It is told what to look at (probes, a heartbeat, the pauses) and knows nothing else of
the worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.exc import SQLAlchemyError

from dicomcast.errors import DicomcastError
from dicomcast.ops.metrics import Metrics


class Heartbeat(Protocol):
    """The loop being watched: when it last made progress, and whether it is stopping."""

    @property
    def progress_at(self) -> float: ...

    @property
    def stopping(self) -> bool: ...


class PauseView(Protocol):
    @property
    def until(self) -> float: ...

    @property
    def reason(self) -> str | None: ...

    def active(self, now: float | None = None) -> bool: ...


@dataclass(frozen=True)
class Report:
    ok: bool
    body: dict[str, Any]


class Health:
    """Probes are cached for `cache_for` seconds so a busy scraper cannot load the servers."""

    def __init__(
        self,
        probes: Mapping[str, Callable[[], object]],
        heartbeat: Heartbeat,
        pauses: Mapping[str, PauseView],
        metrics: Metrics,
        *,
        live_within: float,
        cache_for: float = 2.0,
    ) -> None:
        self.probes = probes
        self.heartbeat = heartbeat
        self.pauses = pauses
        self.metrics = metrics
        self.live_within = live_within
        self.cache_for = cache_for
        self._lock = threading.Lock()
        self._cached: tuple[float, Report] | None = None

    def live(self) -> Report:
        age = time.time() - self.heartbeat.progress_at
        stopping = self.heartbeat.stopping
        ok = age <= self.live_within and not stopping
        return Report(
            ok,
            {
                "live": ok,
                "last_progress_age_s": round(age, 1),
                "limit_s": self.live_within,
                "stopping": stopping,
            },
        )

    def ready(self) -> Report:
        with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < self.cache_for:
                return self._cached[1]
            report = self._probe()
            self._cached = (now, report)
            return report

    def _probe(self) -> Report:
        checks: dict[str, str] = {}
        for name, probe in self.probes.items():
            try:
                probe()
                checks[name] = "ok"
                self.metrics.dependency_up.labels(name).set(1)
            except (DicomcastError, SQLAlchemyError, OSError) as exc:
                checks[name] = f"unavailable: {exc}"
                self.metrics.dependency_up.labels(name).set(0)
        now = time.time()
        paused = {}
        for name, pause in self.pauses.items():
            active = pause.active(now)
            self.metrics.paused.labels(name).set(1 if active else 0)
            if active:
                paused[name] = {"for_s": round(pause.until - now, 1), "reason": pause.reason}
        ok = all(v == "ok" for v in checks.values())
        return Report(ok, {"ready": ok, "checks": checks, "paused": paused})
