"""A status page an operator without Grafana can look at: `GET /` on the listener, the
same data as `GET /status.json`. Server-rendered HTML that refreshes itself, no build step,
no script: per source, the lag now and an SVG plot of the last hour (kept in memory, one
sample every `SAMPLE_EVERY` seconds), studies clean / waiting / failed / seen, paused
dependencies with their failure class, a running backfill's progress and ETA, the latest
failures (their kind and study UID: never patient data) and the feed position."""

from __future__ import annotations

import html
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from dicomcast.errors import DicomcastError

log = logging.getLogger(__name__)
SAMPLE_EVERY = 15.0  # seconds between two lag samples
WINDOW = 3600.0  # seconds of lag kept for the plot
Report = Callable[[], Mapping[str, Any]]  # {"sources": [status of each source]}
Paused = Callable[[], Mapping[str, Any]]  # dependency -> {"for_s", "failure"}


class StatusPage:
    def __init__(
        self, report: Report, paused: Paused, clock: Callable[[], float] = time.time
    ) -> None:
        self.report = report
        self.paused = paused
        self.clock = clock
        self.lag: dict[str, deque[tuple[float, float]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def start(self) -> StatusPage:
        """Sample the lag every SAMPLE_EVERY seconds, whether or not anyone looks."""
        threading.Thread(target=self._sampling, name="status-page", daemon=True).start()
        return self

    def _sampling(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            try:
                self.sample()
            except DicomcastError as exc:  # a state DB outage shows on /readyz; the plot waits
                log.debug("status page sample failed: %s", type(exc).__name__)

    def stop(self) -> None:
        self._stop.set()

    def sample(self) -> dict[str, Any]:
        """The status now, its lag kept for the plot (a sample at most each SAMPLE_EVERY)."""
        now = self.clock()
        report = dict(self.report())
        with self._lock:
            for source in report.get("sources", []):
                kept = self.lag.setdefault(str(source["source"]), deque())
                if not kept or now - kept[-1][0] >= SAMPLE_EVERY:
                    kept.append((now, float(source.get("lag_seconds") or 0.0)))
                while kept and now - kept[0][0] > WINDOW:
                    kept.popleft()
            history = {name: [list(p) for p in points] for name, points in self.lag.items()}
        return {**report, "paused": dict(self.paused()), "lag_history": history, "at": now}

    def html(self) -> str:
        data = self.sample()
        sections = [_source(s, data["lag_history"].get(s["source"], [])) for s in data["sources"]]
        paused = "".join(
            f"<li><b>{_e(name)}</b>: paused {_e(p.get('for_s'))} s more "
            f"({_e(p.get('failure') or 'unavailable')})</li>"
            for name, p in data["paused"].items()
        )
        return PAGE.format(
            paused=f"<ul class=bad>{paused}</ul>" if paused else "<p class=ok>nothing paused</p>",
            sources="".join(sections) or "<p>no source</p>",
            at=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(data["at"])),
        )


def _source(source: Mapping[str, Any], lag: list[list[float]]) -> str:
    studies = source.get("studies", {})
    rows = [
        ("lag now", f"{source.get('lag_seconds', 0)} s (oldest change not yet in FHIR)"),
        (
            "studies",
            f"{studies.get('clean', 0)} clean, {studies.get('dirty', 0)} waiting, "
            f"{studies.get('failed', 0)} failed, {source.get('seen_not_synced', 0)} seen, "
            f"{source.get('deletions', {}).get('held', 0)} deletions held",
        ),
        ("feed", f"{source.get('cursor')} of {source.get('feed_head')}"),
        ("tailed by", source.get("held_by") or "no worker"),
        ("last success", source.get("last_success_at") or "-"),
    ]
    if source.get("feed_error"):
        rows.append(("feed STOPPED", source["feed_error"]))
    backfill = source.get("backfill")
    if backfill:
        eta = f", about {backfill['eta_s']} s left" if backfill.get("eta_s") is not None else ""
        rows.append(
            (
                "backfill",
                f"{backfill['done']} of {backfill['to_sync']} done, {backfill['failed']} "
                f"failed, {backfill['rate_per_s']}/s{eta}",
            )
        )
    table = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    failures = "".join(
        f"<li>{_e(f.get('at') or '')} {_e(f.get('kind'))}: study {_e(f.get('study_uid'))}</li>"
        for f in source.get("latest_failures", [])
    )
    return (
        f"<section><h2>{_e(source['source'])}</h2><table>{table}</table>"
        f"<h3>lag, last hour</h3>{plot(lag)}"
        f"<h3>latest failures</h3>{f'<ul>{failures}</ul>' if failures else '<p>none</p>'}"
        "</section>"
    )


def plot(points: list[list[float]], width: int = 600, height: int = 120) -> str:
    """The lag over the last hour as an SVG polyline (seconds up, time to the right)."""
    if not points:
        return "<p>no samples yet</p>"
    end = points[-1][0]
    top = max(1.0, max(lag for _, lag in points))
    pad = 4  # the line stays inside the frame at 0 s and at the top
    xy = [
        (width - (end - at) / WINDOW * width, height - pad - lag / top * (height - 2 * pad))
        for at, lag in points
    ]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    now_x, now_y = xy[-1]
    return (
        f'<svg role="img" aria-label="lag over the last hour, up to {top:.0f} s" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<rect width="{width}" height="{height}" fill="#f6f6f6"/>'
        f'<polyline fill="none" stroke="#c0392b" stroke-width="2" points="{line}"/>'
        f'<circle cx="{now_x:.1f}" cy="{now_y:.1f}" r="3" fill="#c0392b"/>'
        f'<text x="4" y="14" font-size="12">{top:.0f} s</text>'
        f'<text x="{width - 4}" y="{height - 6}" font-size="12" text-anchor="end">now</text>'
        "</svg>"
    )


def _e(value: Any) -> str:
    return html.escape(str(value))


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="10">
<title>dicomcast status</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222 }}
th {{ text-align: left; padding-right: 1em }} .bad {{ color: #c0392b }} .ok {{ color: #27ae60 }}
section {{ border-top: 1px solid #ccc; margin-top: 1.5em }}
</style></head><body>
<h1>dicomcast</h1><p>as of {at}; this page refreshes every 10 s (data: /status.json)</p>
<h2>dependencies</h2>{paused}
{sources}
</body></html>
"""
