"""Three workers on one PostgreSQL while studies arrive, workers are `kill -9`ed at random
and PostgreSQL itself restarts: every study ends in FHIR exactly once, on its patient; the
cursor never moves backwards; nothing stays claimed; no worker crashes on its own."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from dicomcast.config import Settings
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.postgres import Cluster, postgres
from dicomcast.sandbox.samples import bulk_studies, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.state.store import StateStore
from tests.integration.fhir_state import all_resources, duplicates, first_identifier

pytestmark = pytest.mark.integration
STUDIES, PATIENTS, WORKERS, KILLS = 300, 40, 3, 12


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with postgres() as running:
        yield running


class Workers:
    """`dicomcast run` processes, each with its own worker ID, started again after a kill
    under the same ID (as a service manager would)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def start(self, n: int) -> None:
        log = (self.logs / f"worker-{n}.log").open("ab")
        self._files.append(log)
        self.procs[n] = subprocess.Popen(
            [sys.executable, "-m", "dicomcast", "run"],
            env={**self.env, "DICOMCAST_WORKER_ID": f"worker-{n}"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )

    def kill(self, n: int) -> None:
        self.procs[n].send_signal(signal.SIGKILL)
        self.procs[n].wait(10)

    def stop_all(self) -> dict[int, int | None]:
        """SIGTERM every worker; returns the exit codes of those that had died on their own
        before (None for the ones that were running, as they should be)."""
        crashed = {n: p.poll() for n, p in self.procs.items()}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            proc.wait(60)
        for log in self._files:
            log.close()
        return crashed

    def tails(self, *, everything: bool = False) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[0 if everything else -3000 :]}"
            for path in sorted(self.logs.glob("worker-*.log"))
        )


class CursorWatch(threading.Thread):
    """Reads the source's cursor every 50 ms (through PostgreSQL restarts) and remembers
    whether it ever went back."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = create_engine(url, poolclass=NullPool)
        self.seen: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            try:
                with self.engine.connect() as connection:
                    cursor = connection.execute(
                        text("SELECT cursor FROM sources WHERE name = 'default'")
                    ).scalar()
            except Exception:  # PostgreSQL is restarting: look again
                continue
            if cursor is not None:
                self.seen.append(int(cursor))

    def backwards(self) -> list[tuple[int, int]]:
        return [(a, b) for a, b in zip(self.seen, self.seen[1:], strict=False) if b < a]


def test_three_workers_survive_kills_and_a_postgresql_restart_writing_each_study_once(
    cluster: Cluster,
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    url = cluster.database("chaos")
    settings = make_settings(
        state_url=url,
        concurrency=2,
        poll_interval=0.3,
        feed_lease=3,
        claim_lease=5,
        backoff_max=2,
    )
    specs = bulk_studies(STUDIES, 1, patients=PATIENTS, prefix="chaos", series=1)
    StateStore(url).migrate()  # as a deployment would before starting its workers
    workers = Workers(env_for(settings), tmp_path)
    watch = CursorWatch(url)
    watch.start()
    for n in range(WORKERS):
        workers.start(n)

    def upload() -> None:
        for spec in specs:
            orthanc.upload([to_bytes(ds) for ds in instances(spec)])
            time.sleep(0.04)

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    rng = random.Random(17)
    down: list[int] = []
    for kill in range(KILLS):
        time.sleep(rng.uniform(0.4, 1.4))
        victim = rng.choice([n for n in range(WORKERS) if n not in down])
        workers.kill(victim)
        down.append(victim)
        if kill == KILLS // 2:  # a crash or a failover, as the clients see it: gone a while
            cluster.stop("immediate")
            time.sleep(2.5)
            cluster.start()
        # Some come back at once, some only later: the others must take over meanwhile.
        while down and (len(down) > 1 or rng.random() < 0.6):
            workers.start(down.pop(0))
    for n in down:
        workers.start(n)
    uploader.join(120)

    store = StateStore(url)
    try:
        deadline = time.monotonic() + 120
        while store.counts("default") != {"clean": STUDIES} and time.monotonic() < deadline:
            time.sleep(0.5)
        counts = store.counts("default")
    finally:
        crashed = workers.stop_all()
        watch.done.set()
        watch.join(5)
    try:
        assert counts == {"clean": STUDIES}, workers.tails()
        assert crashed == dict.fromkeys(range(WORKERS)), workers.tails()  # none died alone
        assert "state database" in workers.tails(everything=True)  # the outage was seen
        with store.engine.connect() as connection:
            claimed = connection.execute(
                text("SELECT count(*) FROM studies WHERE claimed_by IS NOT NULL")
            ).scalar()
        assert claimed == 0
    finally:
        store.close()
    assert watch.seen and watch.backwards() == []

    assert duplicates(fhir) == {}  # every identifier resolves to exactly one resource
    studies = {first_identifier(s): s for s in all_resources(fhir, "ImagingStudy")}
    patients = {
        f"Patient/{p['id']}": p["identifier"][0]["value"] for p in all_resources(fhir, "Patient")
    }
    assert len(studies) == STUDIES and len(patients) == PATIENTS
    for spec in specs:
        study = studies[f"urn:dicom:uid|urn:oid:{spec.study_uid}"]
        assert patients[study["subject"]["reference"]] == spec.patient_id
