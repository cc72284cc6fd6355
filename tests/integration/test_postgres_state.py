"""The state DB on a real PostgreSQL 15, and every Alembic revision on both databases."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import OperationalError

from dicomcast.app import build_app
from dicomcast.config import Settings
from dicomcast.model import DirtyMark, Written
from dicomcast.sandbox.environment import env_for
from dicomcast.sandbox.postgres import Cluster, postgres
from dicomcast.sandbox.samples import bulk_studies, instances, to_bytes
from dicomcast.sandbox.servers import FhirServer, OrthancServer
from dicomcast.state.locks import LOCK_SPACE, StudyLocks, lock_key
from dicomcast.state.store import StateStore
from dicomcast.worker import Worker
from tests.fakes import FakeSource, fake_worker
from tests.integration.fhir_state import all_resources, duplicates

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with postgres() as running:
        yield running


@pytest.fixture(scope="module")
def pg_url(cluster: Cluster) -> str:
    return cluster.url


def run_once_in_process(settings: Settings) -> tuple[int, Worker]:
    worker = Worker(build_app(settings))
    try:
        return worker.run_once(), worker
    finally:
        worker.close()
        worker.app.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def test_every_migration_runs_in_order_and_ends_at_the_models(state_url: str) -> None:
    store = StateStore(state_url)
    try:
        cfg = store.db._alembic()
        revisions = list(reversed(list(ScriptDirectory.from_config(cfg).walk_revisions())))
        with store.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.downgrade(cfg, "base")
        for revision in revisions:  # one by one, as an upgrade from each release would
            with store.engine.begin() as connection:
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, revision.revision)
            assert store.schema_revision() == {revision.revision}
        tables = set(inspect(store.engine).get_table_names())
        assert {"sources", "studies", "contributions", "received_instances"} <= tables
        assert store.migrate() is False  # at head: nothing left to do
    finally:
        store.close()


def test_the_store_keeps_its_promises_on_postgresql(pg_url: str) -> None:
    store = StateStore(pg_url)
    try:
        store.migrate()
        store.ensure_source("pg", "orthanc")
        assert store.record_page("pg", "10", "10", [DirtyMark("a"), DirtyMark("b")]) == 2
        tasks = store.claim_due("pg", "w1", 60, 10)
        assert {t.study_key for t in tasks} == {"a", "b"}
        assert store.claim_due("pg", "w2", 60, 10) == []  # held by w1
        task = next(t for t in tasks if t.study_key == "a")
        store.mark_dirty("pg", [DirtyMark("a")])  # new data while it synced
        assert not store.finish_clean(task, Written("1.2", "h", "p", "s", 3))
        store.receive("pg", "20261130/1.2.3", "1.2.3", "1.2.3.1", {"k": 1})
        assert store.received("pg", "20261130/1.2.3") == [{"k": 1}]
        store.baseline("pg", {"old": 4})
        assert store.known_studies("pg")["old"].count == 4
    finally:
        store.close()


def test_two_workers_on_one_postgresql_write_each_study_once(
    cluster: Cluster,
    orthanc: OrthancServer,
    fhir: FhirServer,
    make_settings: Callable[..., Settings],
) -> None:
    specs = bulk_studies(30, 3, patients=6, prefix="pg")
    for spec in specs:
        orthanc.upload([to_bytes(ds) for ds in instances(spec)])
    url = cluster.database("pgtwo")
    env = env_for(make_settings(state_url=url, concurrency=3))
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "dicomcast", "run", "--once"],
            env={**env, "DICOMCAST_WORKER_ID": f"worker-{n}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for n in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=180)
        assert worker.returncode in (0, 1), err.decode()[-2000:]
    store = StateStore(url)
    try:
        if store.counts("default").get("dirty"):  # the one that did not tail may exit early
            code, _ = run_once_in_process(make_settings(state_url=url))
            assert code == 0
        assert store.counts("default") == {"clean": len(specs)}
    finally:
        store.close()
    assert duplicates(fhir) == {}
    assert len(all_resources(fhir, "ImagingStudy")) == len(specs)


def test_pool_size_and_statement_timeout_reach_postgresql(pg_url: str) -> None:
    store = StateStore(pg_url, pool_size=3, statement_timeout=0.3)
    try:
        assert store.engine.pool.size() == 3  # type: ignore[attr-defined]
        with (
            store.engine.connect() as connection,
            pytest.raises(OperationalError, match="statement timeout"),
        ):
            connection.execute(text("SELECT pg_sleep(2)"))
    finally:
        store.close()


def test_a_study_lock_held_by_one_worker_keeps_the_others_waiting(pg_url: str) -> None:
    first, second = StateStore(pg_url), StateStore(pg_url)  # as two worker processes
    try:
        mine = StudyLocks(first.db, wait=5)
        theirs = StudyLocks(second.db, wait=0.3, poll=0.02)
        with mine.hold("urn:dicom:uid|2.25.1") as held:
            assert held
            with theirs.hold("urn:dicom:uid|2.25.1") as other:
                assert other is False
            with theirs.hold("urn:dicom:uid|2.25.2") as other:
                assert other  # another study is not held up
        with theirs.hold("urn:dicom:uid|2.25.1") as other:
            assert other  # released with the write
    finally:
        first.close()
        second.close()


def test_a_study_lock_dies_with_its_holders_connection(pg_url: str) -> None:
    store = StateStore(pg_url)
    other = StateStore(pg_url)
    try:
        locks = StudyLocks(other.db, wait=5, poll=0.02)
        with store.engine.connect() as connection:  # a worker holding the lock, then killed
            taken = connection.execute(
                text("SELECT pg_try_advisory_lock(:s, :k)"),
                {"s": LOCK_SPACE, "k": lock_key("urn:dicom:uid|2.25.3")},
            ).scalar()
            assert taken
            connection.invalidate()  # its connection closes, as a killed process's would
        with locks.hold("urn:dicom:uid|2.25.3") as held:
            assert held
    finally:
        store.close()
        other.close()


def test_workers_claiming_at_once_get_different_studies(cluster: Cluster) -> None:
    url = cluster.database("claims")
    stores = [StateStore(url) for _ in range(3)]
    try:
        stores[0].migrate()
        stores[0].ensure_source("pg", "orthanc")
        stores[0].mark_dirty("pg", [DirtyMark(f"s{n}") for n in range(300)])
        got: dict[int, list[str]] = {n: [] for n in range(3)}

        def claim(n: int) -> None:
            while tasks := stores[n].claim_due("pg", f"w{n}", 60, 7):
                got[n] += [t.study_key for t in tasks]

        threads = [threading.Thread(target=claim, args=(n,)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        claimed = [key for keys in got.values() for key in keys]
        assert sorted(claimed) == sorted(f"s{n}" for n in range(300))  # each exactly once
        assert all(got.values())  # and none of them waited the others out
    finally:
        for store in stores:
            store.close()


class RacyFhir(httpx.MockTransport):
    """A FHIR server whose conditional create is not atomic: it searches, waits, creates."""

    def __init__(self) -> None:
        self.endpoints: list[dict[str, Any]] = []
        super().__init__(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith("/metadata"):
            return httpx.Response(200, json={"resourceType": "CapabilityStatement"})
        if request.method == "GET" and request.url.path.endswith("/Endpoint"):
            entries = [{"resource": e} for e in self.endpoints]
            return httpx.Response(200, json={"resourceType": "Bundle", "entry": entries})
        body = json.loads(request.content)
        time.sleep(0.2)  # between its own search for ifNoneExist and the create
        resource = {**body["entry"][0]["resource"], "id": f"e{len(self.endpoints) + 1}"}
        self.endpoints.append({**resource, "meta": {"versionId": "1"}})
        entry = {"response": {"status": "201 Created", "location": f"Endpoint/{resource['id']}"}}
        return httpx.Response(200, json={"resourceType": "Bundle", "entry": [entry]})


def test_workers_starting_together_create_one_endpoint(cluster: Cluster, tmp_path: Path) -> None:
    url = cluster.database("endpoints")
    fhir = RacyFhir()
    workers = [
        fake_worker(tmp_path, fhir, FakeSource({}), state_url=url, worker_id=f"w{n}")
        for n in range(3)
    ]
    try:
        threads = [threading.Thread(target=w.prepare) for w in workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(fhir.endpoints) == 1  # the others waited, then found it
        assert {w.endpoints.known[FakeSource.location_.address] for w in workers} == {"Endpoint/e1"}
    finally:
        for worker in workers:
            worker.close()
            worker.app.close()
