"""Running for good through what goes wrong around the worker: a FHIR server down at
start-up, a state DB file deleted, corrupted and restored, and one study that always gets a
503 while the server answers the others."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dicomcast.errors import StateUnavailable
from dicomcast.sandbox.samples import bulk_studies
from dicomcast.worker import Worker
from tests.fakes import FakeSource, dicom_json, fake_worker
from tests.fhir_fake import FakeFhir


def make_worker(tmp_path: Path, fhir: FakeFhir, studies: int = 3, **overrides: Any) -> Worker:
    specs = bulk_studies(studies, 2, patients=2, prefix="run")
    source = FakeSource({s.study_uid: dicom_json(s) for s in specs})
    return fake_worker(tmp_path, fhir, source, poll_interval=0.1, **overrides)


def wait_for(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_fhir_server_down_at_start_up_is_waited_for_not_an_exit(tmp_path: Path) -> None:
    fhir = FakeFhir()
    fhir.fail_next = [503] * 6  # the Endpoint lookup fails for a while
    worker = make_worker(tmp_path, fhir)
    runner = threading.Thread(target=worker.run_forever)
    runner.start()
    try:
        wait_for("the pause", lambda: worker.pauses["fhir"].active() or not fhir.fail_next)
        assert runner.is_alive()  # waiting, not exited
        wait_for("every study in FHIR", lambda: len(fhir.all("ImagingStudy")) == 3)
        assert len(fhir.all("Endpoint")) == 1
    finally:
        worker.stop_event.set()
        runner.join(10)
        worker.close()
        worker.app.close()
    assert not runner.is_alive()


def backup(path: Path, to: Path) -> None:
    with sqlite3.connect(path) as source, sqlite3.connect(to) as copy:
        source.backup(copy)


def test_a_deleted_or_corrupted_state_db_pauses_and_the_worker_recovers_once_restored(
    tmp_path: Path,
) -> None:
    fhir = FakeFhir()
    worker = make_worker(tmp_path, fhir)
    db = tmp_path / "state.db"
    try:
        worker.prepare()
        worker.cycle()
        assert worker.store.counts("default") == {"clean": 3}
        backup(db, tmp_path / "backup.db")

        for damage in ("delete", "corrupt"):
            if damage == "delete":
                db.unlink()
            else:
                db.write_bytes(b"this is not a database" * 100)
            with pytest.raises(StateUnavailable, match="missing" if damage == "delete" else None):
                worker.store.ping()  # /readyz's state probe
            worker.tailed_at = -1e9
            worker.cycle()  # no crash: the state pause is on
            assert worker.pauses["state"].active()
            shutil.copy(tmp_path / "backup.db", db)  # the operator restores the backup
            for leftover in ("state.db-wal", "state.db-shm"):
                (tmp_path / leftover).unlink(missing_ok=True)
            worker.store.ping()  # the restored file is the same database: fine again
            worker.pauses["state"].clear()
            source = worker.source
            assert isinstance(source, FakeSource)
            source.feed.append(next(iter(source.studies)))
            worker.tailed_at = -1e9
            worker.cycle()
            assert worker.store.counts("default") == {"clean": 3}
    finally:
        worker.close()
        worker.app.close()


def test_a_state_db_replaced_by_another_is_refused_until_a_restart(tmp_path: Path) -> None:
    worker = make_worker(tmp_path, FakeFhir())
    try:
        worker.prepare()
        (tmp_path / "other").mkdir()
        other = make_worker(tmp_path / "other", FakeFhir())  # another, new state DB
        other.close()
        other.app.close()
        for name in ("state.db", "state.db-wal", "state.db-shm"):  # moved in place of ours
            (tmp_path / name).unlink(missing_ok=True)
        shutil.copy(tmp_path / "other" / "state.db", tmp_path / "state.db")
        with pytest.raises(StateUnavailable, match="replaced by another one"):
            worker.store.ping()
    finally:
        worker.close()
        worker.app.close()


def test_one_study_that_always_gets_a_503_parks_instead_of_pausing_everyone(
    tmp_path: Path,
) -> None:
    fhir = FakeFhir()
    worker = make_worker(tmp_path, fhir, studies=4, concurrency=1)
    assert isinstance(worker.source, FakeSource)
    bad = sorted(worker.source.studies)[0]
    fhir.status_for = lambda bundle: 503 if f"urn:oid:{bad}" in str(bundle) else None
    try:
        worker.prepare()
        worker.tail()
        for _ in range(40):
            time.sleep(0.25)  # past each pause and backoff (at most 0.2 s)
            worker.sync_round(wait_for_stable=False)
            if worker.store.counts("default").get("failed"):
                break
        (row,) = worker.store.failures("default")
    finally:
        worker.close()
        worker.app.close()
    assert (row.study_key, row.status, row.error_status) == (bad, "failed", 503)
    assert row.attempts == 3  # MAX_ATTEMPTS, like any study's own failure
    assert worker.store.counts("default") == {"clean": 3, "failed": 1}


def test_a_signal_while_the_main_thread_holds_the_stop_events_lock_still_stops() -> None:
    """A signal handler runs inside whatever the main thread was doing; one that took the
    stop event's lock while the main thread held it (entering or leaving a wait) would
    never return, and SIGTERM would be ignored for good."""
    import signal as signals

    from dicomcast.runner import _on_signal, _watch_signals

    class Stoppable:
        stop_event = threading.Event()

    worker: Any = Stoppable()
    received: list[int] = []
    watcher = threading.Thread(target=_watch_signals, args=(received, worker), daemon=True)
    watcher.start()
    with worker.stop_event._cond:  # as inside Event.wait, when the signal lands
        _on_signal(received, signals.SIGTERM, worker)  # returns: takes no lock
    assert worker.stop_event.wait(5)
    watcher.join(5)
    assert not watcher.is_alive()
