"""Several workers on one PostgreSQL, and a backfill under live load, against the HTTP
stand-ins (`bench.standins`): throughput, the invariants of the chaos test, live lag."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from bench.ceiling import StandIn, quantile, settings_for
from bench.measure import PeakRss
from bench.standins import Template
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.postgres import Cluster
from dicomcast.state.store import StateStore


@dataclass(frozen=True)
class ScaleOut:
    workers: int
    instances: int
    seconds: float  # from the first study written to the last
    written_twice: int
    left_claimed: int
    left_dirty: int

    @property
    def rate(self) -> float:
        return self.instances / self.seconds


def _workers(env: dict[str, str], count: int, log: Path) -> list[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        return [
            subprocess.Popen(
                [sys.executable, "-m", "dicomcast", "run"],
                env={**env, "DICOMCAST_WORKER_ID": f"bench-{n}"},
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
            for n in range(count)
        ]


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(60)


def scale_out(
    template: Template, studies: int, workers: int, cluster: Cluster, folder: Path
) -> ScaleOut:
    """`workers` processes catch up `studies` from the stand-in on one PostgreSQL."""
    folder.mkdir(parents=True, exist_ok=True)
    url = cluster.database(f"scale{workers}")
    StateStore(url).migrate()
    with StandIn(template, studies, folder) as standin:
        settings = settings_for(url, standin.orthanc, standin.fhir, poll_interval=0.5)
        procs = _workers(env_for(settings), workers, folder / "workers.log")
        try:
            deadline = time.monotonic() + 600
            while len(standin.stats()["first_write"]) < studies:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise SystemExit(f"scale-out with {workers} workers stalled; see {folder}")
                time.sleep(0.5)
            store = StateStore(url)
            try:
                while store.counts("default").get("dirty") and time.monotonic() < deadline:
                    time.sleep(0.2)
                counts = store.counts("default")
            finally:
                store.close()
            stats = standin.stats()
        finally:
            _stop(procs)
    store = StateStore(url)
    try:
        with store.engine.connect() as connection:
            claimed = connection.execute(
                text("SELECT count(*) FROM studies WHERE claimed_by IS NOT NULL")
            ).scalar()
    finally:
        store.close()
    firsts = sorted(stats["first_write"].values())
    return ScaleOut(
        workers,
        studies * template.instances,
        max(0.001, firsts[-1] - firsts[0]),
        sum(1 for n in stats["writes"].values() if n > 1),
        int(claimed or 0),
        counts.get("dirty", 0),
    )


@dataclass(frozen=True)
class Backfill:
    instances: int
    seconds: float
    live: int  # live studies that arrived during the backfill
    lag_p50: float
    lag_p99: float
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.instances / self.seconds


def backfill(template: Template, studies: int, live_rate: float, folder: Path) -> Backfill:
    """`cursor set head`, `backfill`, then one worker syncing the archive while live
    studies arrive at `live_rate` a second; each live study's lag is from its arrival to
    its ImagingStudy's first write."""
    folder.mkdir(parents=True, exist_ok=True)
    options = {"in_feed": False, "live": 100_000, "live_rate": live_rate}
    with StandIn(template, studies, folder, **options) as standin:
        settings = settings_for(f"sqlite:///{folder}/state.db", standin.orthanc, standin.fhir)
        env = env_for(settings)
        for args in (["cursor", "set", "head"], ["backfill", "--no-wait"]):
            done = subprocess.run(
                [sys.executable, "-m", "dicomcast", *args], env=env, capture_output=True
            )
            if done.returncode != 0:
                raise SystemExit(f"{args[0]} failed: {done.stderr.decode()[-2000:]}")
        started = time.time()  # the backfill's time includes the worker's start-up
        (proc,) = _workers(env, 1, folder / "worker.log")
        peak = PeakRss(proc.pid)
        store = StateStore(settings.state_url)
        try:
            time.sleep(1.5)  # live arrivals begin once it runs: start-up is not lag
            standin.go_live()
            deadline = time.monotonic() + 1800
            while (run := store.backfills("default")[0]).finished_at is None:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"the backfill stalled; see {folder}")
                time.sleep(0.5)
            ended = time.time()
            time.sleep(5)  # the last live arrivals are written too
            stats = standin.stats()
        finally:
            store.close()
            _stop([proc])
            peak.stop()
    arrived = {u: t for u, t in stats["released"].items() if t <= ended}
    lags = [stats["first_write"].get(u, ended + 5) - t for u, t in arrived.items()]
    assert run.done == studies, run
    return Backfill(
        studies * template.instances,
        ended - started,
        len(arrived),
        quantile(lags, 50),
        quantile(lags, 99),
        peak.mb,
    )
