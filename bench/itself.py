"""Lines 9-12 of the bench: the worker itself, against stand-ins (no Orthanc or FHIR server
sharing its cores), each with its figures and its targets."""

from __future__ import annotations

from pathlib import Path

from bench.ceiling import ceiling, start_up
from bench.scaleout import backfill, scale_out
from bench.standins import capture
from dicomcast.sandbox.postgres import postgres
from dicomcast.sandbox.servers import OrthancServer

Rows = list[tuple[str, str]]
Targets = list[tuple[bool, str]]
POLL = 2.0  # the worker's default poll interval; the stand-in's studies are stable at once


def measure(root: Path, *, quick: bool, rss_1k: float) -> tuple[Rows, Targets, float]:
    """The rows and targets of lines 9-12, and the 100k backfill's peak RSS."""
    with OrthancServer(root / "capture") as orthanc:
        template = capture(orthanc)
    best = max((ceiling(template, 200) for _ in range(3)), key=lambda c: c.per_cpu_second)
    start = start_up(template)
    scale_studies = 200 if quick else 400
    with postgres() as cluster:
        scaled = [
            scale_out(template, scale_studies, n, cluster, root / f"scale{n}") for n in (1, 2, 4)
        ]
    studies = 400 if quick else 2000
    filled = backfill(template, studies, 5.0, root / "backfill")
    lag_bound = 0 + POLL + 3
    one = scaled[0].rate
    rows: Rows = [
        (
            "9. worker ceiling (stand-ins)",
            f"{best.per_cpu_second:,.0f} instances per worker CPU-second ({best.instances:,} "
            f"instances, {best.cpu_seconds:.2f} CPU-s, best of 3; the stand-ins' own "
            f"{best.standin_seconds:.2f} s taken out)",
        ),
        (
            "10. start-up",
            f"status {start.status:.2f} s, run --once on an empty feed {start.run_once:.2f} s "
            "(wall, best of 5)",
        ),
        (
            "11. scale-out on PostgreSQL",
            ", ".join(
                f"{s.workers} worker{'s' if s.workers > 1 else ''} {s.rate:,.0f} inst/s "
                f"({s.rate / one:.2f}x)"
                for s in scaled
            )
            + f" ({scale_studies} x {template.instances}, 2 cores)",
        ),
        (
            "12. backfill under live load",
            f"{filled.instances:,} instances at {filled.rate:,.0f}/s while {filled.live} live "
            f"studies arrived at 5/s: live lag p50 {filled.lag_p50:.1f} s, p99 "
            f"{filled.lag_p99:.1f} s; peak RSS {filled.peak_rss_mb:.0f} MB",
        ),
    ]
    targets: Targets = [
        (
            best.per_cpu_second >= 10_000,
            f"worker ceiling {best.per_cpu_second:,.0f} instances per CPU-second >= 10,000",
        ),
        (
            max(start.status, start.run_once) <= 0.5,
            f"start-up: status {start.status:.2f} s and run --once {start.run_once:.2f} s <= 0.5 s",
        ),
        (
            all(s.written_twice == s.left_claimed == s.left_dirty == 0 for s in scaled),
            "scale-out: every study written once, none left claimed or dirty ("
            + "; ".join(
                f"{s.workers}: {s.written_twice} twice, {s.left_claimed} claimed, "
                f"{s.left_dirty} dirty"
                for s in scaled
            )
            + ")",
        ),
        (
            filled.lag_p99 <= lag_bound,
            f"live lag p99 during the backfill {filled.lag_p99:.1f} s <= {lag_bound:.0f} s "
            "(StableAge 0 + poll + 3)",
        ),
        (
            filled.peak_rss_mb <= min(150.0, 1.1 * rss_1k),
            f"memory flat to {filled.instances:,} instances: the backfill's peak RSS "
            f"{filled.peak_rss_mb:.0f} MB within 10 % of the 1k backlog's ({rss_1k:.0f} MB) "
            "and <= 150 MB",
        ),
    ]
    return rows, targets, filled.peak_rss_mb
