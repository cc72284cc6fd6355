"""Backfills: what a run marks, that live changes go first, its pace, its progress."""

from __future__ import annotations

from pathlib import Path

from dicomcast.model import DateSpan, DirtyMark, Written
from dicomcast.sandbox.samples import bulk_studies
from dicomcast.state.backfills import BACKFILL, Limits
from dicomcast.state.store import StateStore
from dicomcast.sync.pace import BackfillPace
from tests.fakes import FakeSource, dicom_json, fake_worker
from tests.fhir_fake import FakeFhir


def store_with(source: str = "s") -> StateStore:
    store = StateStore("sqlite://")
    store.migrate()
    store.ensure_source(source, "orthanc")
    return store


def settle(store: StateStore, source: str, keys: str, now: float = 1.0) -> None:
    """Sync the given studies, as a worker would."""
    for task in store.claim_due(source, "w", 60, 100, now=now):
        if task.study_key in keys:
            store.finish_clean(task, Written(None, "h", "p", "i", 1, (), None), now=now)
        else:
            store.release(task)


def test_a_backfill_marks_what_was_never_synced_and_skips_what_was() -> None:
    store = store_with()
    store.mark_dirty("s", [DirtyMark("synced")], now=0.0)
    settle(store, "s", "synced")
    store.baseline("s", {"seen": 3})  # `cursor set head`: known, never synced
    run = store.open_backfill("s", None, None, None, None, now=2.0)
    assert store.mark_backfill(run, ["synced", "seen", "new", "new"], None, now=2.0) == 2
    (progress,) = store.backfills("s", now=3.0)
    assert (progress.listed, progress.marked, progress.done, progress.listing) == (3, 2, 0, False)
    due = store.claim_due("s", "w", 60, 10, priority=BACKFILL, now=3.0)
    assert {t.study_key for t in due} == {"seen", "new"}
    assert store.claim_due("s", "w2", 60, 10, now=3.0) == []  # nothing live is waiting


def test_live_changes_are_claimed_before_a_backfills_studies() -> None:
    store = store_with()
    run = store.open_backfill("s", None, None, None, None, now=0.0)
    store.mark_backfill(run, [f"old{n}" for n in range(5)], None, now=0.0)
    store.mark_dirty("s", [DirtyMark("live", event_time=9.0), DirtyMark("old1", 9.5)], now=10.0)
    live = store.claim_due("s", "w", 60, 10, now=10.0)
    assert {t.study_key for t in live} == {"live", "old1"}  # a live change lifts a study
    old1 = next(t for t in live if t.study_key == "old1")
    assert (old1.priority, old1.event_time) == (0, 9.5)  # and its lag counts from the change
    later = store.claim_due("s", "w", 60, 10, priority=BACKFILL, now=10.0)
    assert len(later) == 4 and all(t.priority == BACKFILL for t in later)


def test_lag_is_the_live_changes_and_progress_is_the_backfills() -> None:
    store = store_with()
    run = store.open_backfill("s", "20200101", None, 2.0, None, now=0.0)
    store.mark_backfill(run, ["a", "b", "c"], "3", now=0.0)
    summary = store.summary("s")
    assert summary.oldest_event is None  # a backfill's waiting studies are no lag
    assert summary.backfill is not None and summary.backfill.listing
    store.mark_backfill(run, ["d"], None, now=1.0)
    for task in store.claim_due("s", "w", 60, 10, priority=BACKFILL, now=2.0):
        store.finish_clean(task, Written(None, "h", "p", "i", 1, (), None), now=2.0)
    (done,) = store.backfills("s", now=4.0)
    assert (done.marked, done.done, done.finished_at, done.eta) == (4, 4, 4.0, 0.0)
    assert done.rate == 1.0  # 4 studies in 4 s
    assert store.summary("s").backfill is None  # finished runs are history
    assert store.backfill_limits() == {}


def test_an_interrupted_backfill_resumes_after_its_last_saved_page() -> None:
    store = store_with()
    run = store.open_backfill("s", None, "20241231", 5.0, None, now=0.0)
    store.mark_backfill(run, ["a", "b"], "2", now=0.0)
    again = store.open_backfill("s", None, "20241231", 1.0, 50.0, now=1.0)  # after a crash
    assert (again.id, again.after, again.listed) == (run.id, "2", 2)
    assert store.backfill_limits() == {"s": Limits(1.0, 50.0)}  # the new limits hold
    other = store.open_backfill("s", "20240101", None, None, None, now=1.0)
    assert other.id != run.id  # another span is another run


def test_the_pace_admits_a_few_per_round_within_both_rates() -> None:
    now = [0.0]
    pace = BackfillPace(per_round=8, clock=lambda: now[0])
    assert pace.admit("s", 0) == 0  # no backfill runs
    pace.update({"s": Limits(None, None)})
    assert pace.admit("s", 0) == 8
    pace.update({"s": Limits(2.0, None)})
    assert pace.admit("s", 0) == 1  # a burst of at most one second's worth
    pace.spend("s", 1)
    now[0] = 1.0
    assert pace.admit("s", 0) == 2
    pace.spend("s", 2)
    assert pace.admit("s", 0) == 0
    pace.update({"s": Limits(None, 10.0)})
    now[0] = 2.0
    assert pace.admit("s", 100) == 8  # the first look only starts counting
    now[0] = 3.0
    assert pace.admit("s", 130) == 0  # 30 requests in a second: over the 10/s limit


def test_a_worker_syncs_a_backfill_and_its_live_changes(tmp_path: Path) -> None:
    specs = bulk_studies(12, 1, patients=3, prefix="bf", series=1)
    studies = {spec.study_uid: dicom_json(spec) for spec in specs}
    source = FakeSource(studies)
    source.feed = list(studies)[:2]  # the feed knows two; the archive holds twelve
    worker = fake_worker(tmp_path, FakeFhir(), source)
    try:
        store = worker.store
        store.ensure_source("default", "fake")
        run = store.open_backfill("default", None, None, None, None)
        after = None
        while True:
            page = source.archive(DateSpan(), after, 5)
            store.mark_backfill(run, page.keys, page.after)
            after = page.after
            if after is None:
                break
        assert worker.run_once() == 0
        assert store.counts("default") == {"clean": 12}
        (progress,) = store.backfills("default")
        assert progress.finished_at is not None and progress.done + progress.failed == 12
    finally:
        worker.close()
        worker.app.close()


def test_a_deployments_limits_are_shared_by_the_workers_seen_lately() -> None:
    store = store_with()
    assert store.heartbeat("w1", within=10, now=100.0) == 1
    assert store.heartbeat("w2", within=10, now=101.0) == 2
    assert store.heartbeat("w3", within=10, now=102.0) == 3
    assert store.heartbeat("w1", within=10, now=115.0) == 1  # w2 and w3 fell silent
    now = [0.0]
    pace = BackfillPace(per_round=100, clock=lambda: now[0])
    pace.update({"s": Limits(30.0, 90.0)}, workers=3)
    assert pace.limits == {"s": Limits(10.0, 30.0)}  # each takes a third
    assert pace.admit("s", 0) == 1  # a bucket starts with one study
    pace.spend("s", 1)
    now[0] = 1.0
    assert pace.admit("s", 0) == 10  # then a third of 30 a second


def test_a_stored_limit_the_pace_cannot_use_runs_unpaced_instead_of_stalling() -> None:
    store = store_with()
    store.open_backfill("s", None, None, float("inf"), 1e400, now=1.0)  # stored before checks
    assert store.backfill_limits() == {"s": Limits(None, None)}
    pace = BackfillPace(per_round=8, clock=lambda: 5.0)
    pace.update(store.backfill_limits(), workers=3)
    assert pace.admit("s", 10) == 8  # no OverflowError, no stall


def test_a_cancelled_backfill_leaves_its_unsynced_studies_as_seen() -> None:
    """`backfill --cancel`: what it had not synced is as `cursor set head` left it; a
    study being synced, and one a live change lifted, are left to finish."""
    store = store_with()
    run = store.open_backfill("s", None, None, None, None, now=0.0)
    store.mark_backfill(run, ["a", "b", "c", "d"], None, now=0.0)
    (claimed,) = store.claim_due("s", "w", 60, 1, priority=BACKFILL, now=1.0)
    lifted = next(k for k in "abcd" if k != claimed.study_key)
    store.mark_dirty("s", [DirtyMark(lifted, 2.0)], now=2.0)  # a live change to it
    assert store.cancel_backfills("s", now=3.0) == 2
    summary = store.summary("s")
    assert summary.seen == 2 and summary.backfill is None  # the run is over
    assert [t.study_key for t in store.claim_due("s", "w2", 60, 10, now=4.0)] == [lifted]
    assert store.claim_due("s", "w2", 60, 10, priority=BACKFILL, now=4.0) == []
    assert store.cancel_backfills("s", now=5.0) == 0  # nothing left to cancel
