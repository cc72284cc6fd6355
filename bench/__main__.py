"""End-to-end benchmark against the real servers: `python -m bench [--quick]`.

Prints a table of figures, then one PASS/FAIL line per target, and exits 0 only when every
target passes. Every ratio compares figures measured in this same run, on this machine:

1. catch-up: `dicomcast run --once` from an empty FHIR server, as its own process;
2. the limit: the same final transactions replayed straight to a fresh FHIR server with the
   same concurrency, no worker logic;
3. the anchor's way (DICOM Cast): one search and one read-modify-write per instance, in order;
4. steady-state lag at a fixed arrival rate, from the store in Orthanc to FHIR search;
5. peak RSS of the worker on a 1k and a 10k backlog of 50-instance studies, and on the 10k
   plus the large studies;
6. mapping alone, on one core;
7. what dose reports cost: images' metadata and mapping with dose Observations on and off;
8. a PACS over DIMSE: `run --once` by C-FIND polling, and storescu into the C-STORE listener
   (many small instances, and one multiframe of 512 MiB, 1 GiB in full: the listener's memory);
9-12. the worker itself against in-memory stand-ins (`bench.itself`): its ceiling in
   instances per CPU-second, start-up, 1/2/4 workers on PostgreSQL, and a backfill while
   live studies arrive.

The replay limit (2.) is reported, not a target: on two cores Orthanc and the FHIR server
share the CPU with the worker, so the worker's own ceiling is measured apart (9.).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from bench import dimse, itself
from bench.measure import (
    CatchUp,
    catch_up,
    dose_cost,
    limit_replay,
    mapping_alone,
    mappings,
    per_event_baseline,
    steady_state_lag,
)
from bench.workloads import Workload, upload, workload
from dicomcast.sandbox.servers import FhirServer, OrthancServer

T = TypeVar("T")
STABLE_AGE, POLL_INTERVAL = 2, 2.0  # Orthanc's and the worker's defaults here


def with_servers(folder: Path, use: Callable[[OrthancServer, FhirServer], T], stable: int) -> T:
    # Each server stops whatever happens next, even when the other fails to start.
    with (
        OrthancServer(folder / "orthanc", stable_age=stable) as orthanc,
        FhirServer(folder / "fhir") as fhir,
    ):
        return use(orthanc, fhir)


def run_catch_up(folder: Path, load: Workload) -> CatchUp:
    def use(orthanc: OrthancServer, fhir: FhirServer) -> CatchUp:
        upload(orthanc, load.studies)
        return catch_up(orthanc, fhir, folder / "state.db", load)

    return with_servers(folder, use, STABLE_AGE)


def run_backlogs(folder: Path, ten_k: Workload, large: Workload) -> tuple[CatchUp, CatchUp, float]:
    """The 10k backlog of 50-instance studies, then (same archive, fresh FHIR server and
    state) the same plus the large studies; returns both runs and the upload time."""
    orthanc = OrthancServer(folder / "orthanc", stable_age=STABLE_AGE).start()
    try:
        started = time.monotonic()
        upload(orthanc, ten_k.studies)
        uploaded = time.monotonic() - started
        runs = []
        for name, load in (("10k", ten_k), ("all", Workload("all", ten_k.studies + large.studies))):
            if load is not ten_k:
                upload(orthanc, large.studies)
            fhir = FhirServer(folder / f"fhir-{name}").start()
            try:
                runs.append(catch_up(orthanc, fhir, folder / f"{name}.db", load))
            finally:
                fhir.stop()
        return runs[0], runs[1], uploaded
    finally:
        orthanc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="shorter runs (under 5 minutes)")
    args = parser.parse_args()
    one_k, ten_k = workload("small", 20, 50), workload("big", 200, 50)
    if args.quick:
        large, base, steady_seconds = workload("large", 0, 0, large=1), workload("base", 10, 50), 30
    else:
        large, base, steady_seconds = (
            workload("large", 0, 0, large=3),
            workload("base", 40, 50),
            180,
        )
    maps = mappings()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small = run_catch_up(root / "small", one_k)
        backlog, run, uploaded = run_backlogs(root / "big", ten_k, large)
        everything = Workload("all", ten_k.studies + large.studies)
        limit_fhir = FhirServer(root / "limit").start()
        try:
            limit = limit_replay(limit_fhir, everything, maps)
        finally:
            limit_fhir.stop()
        base_fhir = FhirServer(root / "base").start()
        try:
            base_seconds, base_requests = per_event_baseline(base_fhir, base, maps)
        finally:
            base_fhir.stop()
        lag = with_servers(
            root / "steady",
            lambda o, f: steady_state_lag(o, f, root / "steady.db", 20.0, steady_seconds),
            STABLE_AGE,
        )
        query = dimse.query_mode(root / "dimse-query", 20, 20)
        push = dimse.push_mode(root / "dimse-push", 20, 20)
        big_push = dimse.large_push(root / "dimse-large", 1024 if args.quick else 2048)
        own_rows, own_targets, _ = itself.measure(
            root / "itself", quick=args.quick, rss_1k=small.peak_rss_mb
        )
    mapping_rate = mapping_alone(maps)
    dose = dose_cost()

    per_instance = small.requests / small.instances
    limit_rate = everything.instances / limit
    base_rate = base.instances / base_seconds
    lag_bound = STABLE_AGE + POLL_INTERVAL + 2
    pushed_mib = big_push.pixel_bytes / 2**20
    push_rate = pushed_mib / big_push.seconds
    rows = [
        ("data", f"{len(everything.studies)} studies, {everything.instances:,} instances "
                 f"(incl. {len(large.studies)} of 1,000); the 10k stored in Orthanc in "
                 f"{uploaded:.0f} s"),
        ("1. catch-up", f"{run.rate:,.0f} instances/s, {run.studies / run.sync_seconds:.1f} "
                        f"studies/s ({run.sync_seconds:.1f} s; process {run.process_seconds:.1f} s "
                        "with start-up)"),
        ("   FHIR requests / instance", f"{per_instance:.3f} on 50-instance studies; "
                                        f"{run.requests / run.instances:.3f} overall"),
        ("   worker CPU / 1,000 instances", f"{run.cpu_seconds / run.instances * 1000:.2f} s"),
        ("2. limit (replay, no worker)", f"{limit_rate:,.0f} instances/s ({limit:.1f} s)"),
        ("   ratio catch-up / limit", f"{run.rate / limit_rate:.2f} (servers share 2 cores)"),
        ("3. per-event (anchor's way)", f"{base_rate:,.0f} instances/s, "
                                        f"{base_requests / base.instances:.2f} requests/instance"),
        ("   ratio catch-up / per-event", f"{run.rate / base_rate:.1f}x"),
        ("4. steady-state lag", f"{lag.instances} instances at {lag.rate:.0f}/s: p50 "
                                f"{lag.p50:.1f} s, p95 {lag.p95:.1f} s, p99 {lag.p99:.1f} s "
                                f"(StableAge {STABLE_AGE} s, poll {POLL_INTERVAL:.0f} s)"),
        ("5. peak RSS", f"{small.peak_rss_mb:.0f} MB (1k backlog), {backlog.peak_rss_mb:.0f} MB "
                        f"(10k backlog), {run.peak_rss_mb:.0f} MB (10k + large studies)"),
        ("6. mapping alone", f"{mapping_rate:,.0f} instances/s (1,000-instance study, one core)"),
        ("7. dose reports: 1,000 images", f"metadata read {dose.read_on * 1000:.0f} ms on / "
                                          f"{dose.read_off * 1000:.0f} ms off, kept "
                                          f"{dose.kept_on:,} / {dose.kept_off:,} bytes; mapped "
                                          f"{dose.map_on:,.0f} / {dose.map_off:,.0f} inst/s"),
        ("   one CT dose report", f"read {dose.report_read * 1000:.1f} ms, Observation mapped "
                                  f"in {dose.report_map * 1000:.1f} ms"),
        ("8. DIMSE query (C-FIND)", f"{query.studies / query.seconds:.1f} studies/s, "
                                    f"{query.rate:,.0f} instances/s ({query.studies} x "
                                    f"{query.instances // query.studies}, 2 series); "
                                    f"{query.finds_per_study:.1f} C-FINDs per study"),
        ("   DIMSE push (C-STORE in)", f"{push.studies / push.seconds:.1f} studies/s, "
                                       f"{push.rate:,.0f} instances/s, storescu to FHIR "
                                       "(StableAge 1 s)"),
        ("   DIMSE push, one large instance", f"{pushed_mib:,.0f} MiB of pixel data in "
                                              f"{big_push.seconds:.1f} s ({push_rate:,.0f} "
                                              "MiB/s); worker peak RSS "
                                              f"{big_push.rss_before / 2**20:.0f} MiB + "
                                              f"{big_push.rss_growth / 2**20:.0f} MiB"),
        *own_rows,
    ]  # fmt: skip
    targets = [
        (per_instance <= 0.05, f"FHIR requests per instance {per_instance:.3f} <= 0.05"),
        (run.rate / base_rate >= 20, f"{run.rate / base_rate:.1f}x the per-event baseline >= 20x"),
        (
            lag.p99 <= lag_bound and lag.unseen == 0,
            f"lag p99 {lag.p99:.1f} s <= {lag_bound:.0f} s, {lag.unseen} instances never seen",
        ),
        (
            max(small.peak_rss_mb, backlog.peak_rss_mb, run.peak_rss_mb) <= 150,
            f"peak RSS {max(small.peak_rss_mb, backlog.peak_rss_mb, run.peak_rss_mb):.0f} MB "
            "<= 150 MB",
        ),
        (
            backlog.peak_rss_mb <= 1.1 * small.peak_rss_mb,
            f"10k backlog RSS {backlog.peak_rss_mb:.0f} MB within 10 % of the 1k backlog's "
            f"({small.peak_rss_mb:.0f} MB)",
        ),
        (mapping_rate >= 20_000, f"mapping {mapping_rate:,.0f} instances/s >= 20,000"),
        (
            dose.kept_on == dose.kept_off and dose.read_on <= 1.15 * dose.read_off,
            f"images do not pay for dose reports: same bytes kept, read "
            f"{dose.read_on / dose.read_off:.2f}x <= 1.15x",
        ),
        (
            query.finds_per_study <= 4.0,
            f"C-FINDs per synced study {query.finds_per_study:.1f} <= 4 (study, series, "
            "images of its 2 series; listings apart)",
        ),
        (
            dose.map_on >= 0.9 * dose.map_off,
            f"mapping images with dose on {dose.map_on / dose.map_off:.2f}x of off >= 0.90x",
        ),
        (
            big_push.rss_growth <= 0.05 * big_push.pixel_bytes,
            f"the listener's RSS grows {big_push.rss_growth / big_push.pixel_bytes:.1%} of "
            "the pixel data pushed through it <= 5 %",
        ),
        *own_targets,
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print()
    for ok, text in targets:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return 0 if all(ok for ok, _ in targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
