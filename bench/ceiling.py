"""The worker itself, against stand-ins that answer from memory (`bench.standins`):

- its ceiling: one process catching up a backlog, in instances per CPU-second;
- its start-up: `status` and `run --once` on an empty feed, wall time;
- scale-out: 1, 2 and 4 worker processes on one PostgreSQL sharing an HTTP stand-in;
- backfill: a large archive backfilled while live studies arrive, with their lag.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx

from bench.standins import Archive, Fhir, Template, transport
from dicomcast.app import build_app
from dicomcast.config import Settings, load_settings
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.samples import DEMO_ISSUERS, DEMO_PATIENT_SYSTEM
from dicomcast.worker import Worker

ORTHANC, FHIR = "http://orthanc.standin/orthanc", "http://fhir.standin/fhir"


def settings_for(state: str, orthanc: str = ORTHANC, fhir: str = FHIR, **more: Any) -> Settings:
    return load_settings(
        None,
        source_url=orthanc,
        fhir_url=fhir,
        state_url=state,
        patient_id_system=DEMO_PATIENT_SYSTEM,
        issuer_systems=DEMO_ISSUERS,
        http_port=0,
        log_level="WARNING",
        **more,
    )


@dataclass(frozen=True)
class Ceiling:
    instances: int
    cpu_seconds: float  # the process's, less what the stand-ins spent answering
    standin_seconds: float
    wall_seconds: float

    @property
    def per_cpu_second(self) -> float:
        return self.instances / self.cpu_seconds


def ceiling(template: Template, studies: int) -> Ceiling:
    """`run --once` in this process over a backlog of `studies`, stand-ins in memory; the
    process's CPU time less the stand-ins' own (measured in their threads)."""
    archive, fhir = Archive(template, studies), Fhir()
    to_archive, to_fhir = transport(archive.answer, "/orthanc"), transport(fhir.answer, "/fhir")
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(f"sqlite:///{tmp}/state.db")
        app = build_app(
            settings,
            fhir_transport=to_fhir,
            adapt=lambda _config, context: replace(context, transport=to_archive),
        )
        worker = Worker(app)
        try:
            cpu, wall = time.process_time(), time.perf_counter()
            code = worker.run_once()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        finally:
            worker.close()
            app.close()
    if code != 0 or len(fhir.writes) != studies:
        raise SystemExit(f"ceiling run failed: exit {code}, {len(fhir.writes)} studies written")
    standins = to_archive.spent + to_fhir.spent
    return Ceiling(studies * template.instances, cpu - standins, standins, wall)


@dataclass(frozen=True)
class StartUp:
    status: float
    run_once: float


def start_up(template: Template) -> StartUp:
    """Wall time of `dicomcast status` and of `run --once` on an empty feed, each the best
    of 5, against the HTTP stand-in."""
    with tempfile.TemporaryDirectory() as tmp, StandIn(template, 0, Path(tmp)) as standin:
        settings = settings_for(f"sqlite:///{tmp}/state.db", standin.orthanc, standin.fhir)
        env = env_for(settings)
        times: dict[str, float] = {}
        for name, args in (("run", ["run", "--once"]), ("status", ["status"])):
            runs = []
            for _ in range(5):
                started = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "dicomcast", *args], env=env, capture_output=True
                )
                runs.append(time.perf_counter() - started)
                if done.returncode != 0:
                    raise SystemExit(f"{name} failed: {done.stderr.decode()[-2000:]}")
            times[name] = min(runs)
    return StartUp(times["status"], times["run"])


class StandIn:
    """The HTTP stand-ins as their own process (`python -m bench.standin_server`)."""

    def __init__(self, template: Template, archived: int, folder: Path, **options: Any) -> None:
        self.file = folder / "template.json"
        self.file.write_text(json.dumps(template.__dict__))
        self.args = [str(self.file), str(archived), json.dumps(options)]
        self.proc: subprocess.Popen[str] | None = None
        self.base = ""

    def __enter__(self) -> StandIn:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.standin_server", *self.args],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        port = int(self.proc.stdout.readline().split()[-1])
        self.base = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)

    @property
    def orthanc(self) -> str:
        return f"{self.base}/orthanc"

    @property
    def fhir(self) -> str:
        return f"{self.base}/fhir"

    def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.base}/bench/stats", timeout=30).json()
        return answer

    def go_live(self) -> None:
        httpx.post(f"{self.base}/bench/live", timeout=30)


def quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]
