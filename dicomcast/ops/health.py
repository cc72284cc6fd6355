"""Liveness and readiness, as the HTTP listener and `check-config` report them.

Live: the worker's loop made progress recently (a hung loop gets the process restarted).
Ready: the state DB, the DICOM server and the FHIR server all answer a quick probe now.
Not ready is not dead: the worker keeps running and catches up once the server returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from dicomcast.errors import DicomcastError
from dicomcast.sources.base import source_dependency

if TYPE_CHECKING:
    from dicomcast.worker import Worker


@dataclass(frozen=True)
class Report:
    ok: bool
    body: dict[str, Any]


class Health:
    """Probes are cached for `cache_for` seconds so a busy scraper cannot load the servers."""

    def __init__(self, worker: Worker, *, cache_for: float = 2.0) -> None:
        self.worker = worker
        self.cache_for = cache_for
        self.live_within = max(60.0, 10 * worker.settings.poll_interval)
        self._lock = threading.Lock()
        self._cached: tuple[float, Report] | None = None

    def live(self) -> Report:
        age = time.time() - self.worker.progress_at
        ok = age <= self.live_within and not self.worker.stop_event.is_set()
        return Report(
            ok,
            {
                "live": ok,
                "last_progress_age_s": round(age, 1),
                "limit_s": self.live_within,
                "stopping": self.worker.stop_event.is_set(),
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
        app = self.worker.app
        probes: dict[str, Callable[[], object]] = {"state": app.store.ping}
        for name, source in app.sources.items():
            probes[source_dependency(name)] = source.check
        probes["fhir"] = app.fhir.ping
        checks: dict[str, str] = {}
        for name, probe in probes.items():
            try:
                probe()
                checks[name] = "ok"
                app.metrics.dependency_up.labels(name).set(1)
            except (DicomcastError, SQLAlchemyError, OSError) as exc:
                checks[name] = f"unavailable: {exc}"
                app.metrics.dependency_up.labels(name).set(0)
        now = time.time()
        paused = {}
        for name, pause in self.worker.pauses.items():
            active = pause.active(now)
            app.metrics.paused.labels(name).set(1 if active else 0)
            if active:
                paused[name] = {"for_s": round(pause.until - now, 1), "reason": pause.reason}
        ok = all(v == "ok" for v in checks.values())
        return Report(ok, {"ready": ok, "checks": checks, "paused": paused})
