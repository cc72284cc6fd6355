"""Liveness and readiness, as the HTTP listener and `check-config` report them.

Live: the worker's loop made progress recently (a hung loop gets the process restarted).
Ready: the state DB, the DICOM servers and the FHIR server all answered a quick probe.
Not ready is not dead: the worker keeps running and catches up once the server returns.

Probes run in a background thread, each bounded; `/readyz` and `/metrics` answer from the
last results at once and never wait on a dependency (Prometheus gives a scrape 10 s). A
report names each dependency and the class of its failure, never a server's words.
It is told what to look at (probes, a heartbeat, the pauses) and knows nothing else of the
worker.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Protocol

from dicomcast.errors import failure_class
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
    def kind(self) -> str | None: ...

    def active(self, now: float | None = None) -> bool: ...


@dataclass(frozen=True)
class Report:
    ok: bool
    body: dict[str, Any]


class Health:
    """`every` seconds, each probe is run (at most `probe_timeout` seconds of waiting)."""

    def __init__(
        self,
        probes: Mapping[str, Callable[[], object]],
        heartbeat: Heartbeat,
        pauses: Mapping[str, PauseView],
        metrics: Metrics,
        *,
        live_within: float,
        every: float = 2.0,
        probe_timeout: float = 5.0,
    ) -> None:
        self.probes = probes
        self.heartbeat = heartbeat
        self.pauses = pauses
        self.metrics = metrics
        self.live_within = live_within
        self.every = every
        self.probe_timeout = probe_timeout
        self._checks: dict[str, str] = dict.fromkeys(probes, "not probed yet")
        self._running: dict[str, Future[object]] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(probes)), thread_name_prefix="probe")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> Health:
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.probe()
            self._stop.wait(self.every)

    def probe(self) -> None:
        """Run every probe once (in parallel, each bounded) and keep the results. A probe
        still hanging from an earlier round is reported as such, not run twice."""
        started = {
            name: self._running.get(name) or self._pool.submit(probe)
            for name, probe in self.probes.items()
        }
        deadline = time.monotonic() + self.probe_timeout
        checks: dict[str, str] = {}
        for name, future in started.items():
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
                checks[name] = "ok"
                self._running.pop(name, None)
            except FutureTimeout:
                checks[name] = f"unavailable: no answer within {self.probe_timeout:g} s"
                self._running[name] = future
            except Exception as exc:  # noqa: BLE001 - any failure makes it unready
                checks[name] = f"unavailable: {failure_class(exc)}"
                self._running.pop(name, None)
            self.metrics.dependency_up.labels(name).set(1 if checks[name] == "ok" else 0)
        with self._lock:
            self._checks = checks

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
        """The last probe results and the active pauses; never waits on a dependency."""
        with self._lock:
            checks = dict(self._checks)
        now = time.time()
        paused = {}
        for name, pause in self.pauses.items():
            active = pause.active(now)
            if active:
                paused[name] = {"for_s": round(pause.until - now, 1), "failure": pause.kind}
        ok = all(v == "ok" for v in checks.values())
        return Report(ok, {"ready": ok, "checks": checks, "paused": paused})
