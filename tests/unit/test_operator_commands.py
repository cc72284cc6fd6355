"""Operator commands on a real SQLite state DB: failures read back in full, retry, resync,
and a cursor that cannot be moved under a running worker."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicomcast.cli import app
from dicomcast.model import DirtyMark, StudyTask, Written
from dicomcast.state.store import StateStore

runner = CliRunner()
OUTCOME = "error invalid ImagingStudy.series[0].modality: code 'XX' unknown"


@pytest.fixture
def state(tmp_path: Path) -> tuple[StateStore, dict[str, str]]:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore(url)
    store.migrate()
    store.ensure_source("default", "orthanc")
    marks = [DirtyMark(key, 1000.0, f"1.2.{n}") for n, key in enumerate("abc", 1)]
    store.record_page("default", "30", "42", marks)
    tasks = {t.study_key: t for t in store.due("default", 10)}
    store.finish_failed(
        tasks["a"], "transaction: HTTP 422 (invalid)", "FhirRejected", park=True,
        retry_at=None, http_status=422, detail=OUTCOME,
    )  # fmt: skip
    store.finish_failed(
        tasks["b"], "transaction: HTTP 503", "FhirUnavailable", park=False,
        retry_at=time.time() + 600, http_status=503,
    )  # fmt: skip
    store.finish_clean(tasks["c"], Written("1.2.3", "hash-c", "p1", "s1", 2))
    return store, {"DICOMCAST_STATE_URL": url}


def task_of(store: StateStore, key: str) -> StudyTask | None:
    return next((t for t in store.due("default", 10) if t.study_key == key), None)


def test_failures_are_listed_and_shown_with_status_and_outcome(
    state: tuple[StateStore, dict[str, str]],
) -> None:
    _, env = state
    listed = runner.invoke(app, ["failures", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    items = {i["study_uid"]: i for i in json.loads(listed.stdout)}
    assert set(items) == {"1.2.1", "1.2.2"}
    assert (items["1.2.1"]["status"], items["1.2.1"]["http_status"]) == ("failed", 422)
    # The list is safe to paste anywhere: the server's words (they can name the patient) and
    # quoted values in warnings stay out of it; `failures show` prints them.
    assert items["1.2.1"]["error"] == "transaction: HTTP 422 (invalid)"
    assert OUTCOME not in listed.stdout and "detail" not in items["1.2.1"]
    assert (items["1.2.2"]["status"], items["1.2.2"]["kind"]) == ("retrying", "FhirUnavailable")
    assert items["1.2.2"]["next_attempt_at"] is not None

    text = runner.invoke(app, ["failures", "list"], env=env).stdout
    assert "1.2.1" in text and "FhirRejected" in text and "422" in text

    shown = runner.invoke(app, ["failures", "show", "1.2.1"], env=env)
    assert shown.exit_code == 0 and OUTCOME in shown.stdout and "422" in shown.stdout
    missing = runner.invoke(app, ["failures", "show", "9.9"], env=env)
    assert missing.exit_code == 1


def test_retry_makes_failed_studies_due_with_fresh_attempts(
    state: tuple[StateStore, dict[str, str]],
) -> None:
    store, env = state
    assert task_of(store, "a") is None  # parked: never due by itself
    assert runner.invoke(app, ["failures", "retry"], env=env).exit_code == 2
    done = runner.invoke(app, ["failures", "retry", "1.2.1"], env=env)
    assert done.exit_code == 0 and done.stdout.startswith("1 studies")
    task = task_of(store, "a")
    assert task is not None and task.attempts == 0
    assert runner.invoke(app, ["failures", "retry", "--all"], env=env).stdout.startswith("2 ")
    assert task_of(store, "b") is not None  # the backing-off one is due now too
    assert runner.invoke(app, ["failures", "retry", "7.7"], env=env).exit_code == 1


def test_resync_forces_a_clean_study_through_again(
    state: tuple[StateStore, dict[str, str]],
) -> None:
    store, env = state
    assert task_of(store, "c") is None
    done = runner.invoke(app, ["resync", "1.2.3"], env=env)
    assert done.exit_code == 0, done.output
    task = task_of(store, "c")
    # No content hash: the worker writes it even though nothing changed.
    assert task is not None and task.content_hash is None and task.fhir_imagingstudy_id == "s1"


def test_cursor_cannot_be_moved_under_a_running_worker(
    state: tuple[StateStore, dict[str, str]],
) -> None:
    store, env = state
    assert store.acquire_source("default", "worker-1", lease=60)
    refused = runner.invoke(app, ["cursor", "set", "5"], env=env)
    assert refused.exit_code == 3 and "held by worker 'worker-1'" in refused.stderr
    assert "held by  worker-1" in runner.invoke(app, ["cursor", "show"], env=env).stdout
    assert store.summary("default").cursor == "30"
    assert not store.acquire_source("default", "worker-2", lease=60)  # one tailer at a time

    store.release_source("default", "worker-1")
    moved = runner.invoke(app, ["cursor", "set", "5"], env=env)
    assert moved.exit_code == 0 and "from 30 to 5" in moved.stdout
    assert "cursor   5" in runner.invoke(app, ["cursor", "show"], env=env).stdout
    assert runner.invoke(app, ["cursor", "set", "-3"], env=env).exit_code == 2
    # An expired lease (the worker was killed) does not block the operator.
    assert store.acquire_source("default", "worker-2", lease=60, now=time.time() - 120)
    assert runner.invoke(app, ["cursor", "set", "7"], env=env).exit_code == 0


def test_status_reports_lag_and_failures_by_reason(
    state: tuple[StateStore, dict[str, str]],
) -> None:
    _, env = state
    result = runner.invoke(app, ["status", "--json"], env=env)
    (info,) = json.loads(result.stdout)["sources"]
    assert (info["cursor"], info["feed_head"], info["lag_events"]) == ("30", "42", 12)
    assert info["studies"] == {"clean": 1, "dirty": 1, "failed": 1}
    assert info["failures_by_kind"] == {"FhirRejected": 1}
    assert info["lag_seconds"] > 1e9 - 1000  # the waiting change is from 1970 + 1000 s
    text = runner.invoke(app, ["status"], env=env).stdout
    assert "12 events behind" in text and "FhirRejected: 1" in text


def test_cursor_set_among_several_sources_needs_one_named(
    state: tuple[StateStore, dict[str, str]],
) -> None:
    store, env = state
    store.ensure_source("cloud", "azure-dicom")  # the state DB now knows two sources
    refused = runner.invoke(app, ["cursor", "set", "5"], env=env)
    assert refused.exit_code == 2 and "--source" in refused.stderr
    assert store.summary("default").cursor == "30"
    moved = runner.invoke(app, ["cursor", "set", "5", "--source", "default"], env=env)
    assert moved.exit_code == 0 and store.summary("default").cursor == "5"


@pytest.mark.parametrize(
    "args",
    [
        ["cursor", "set", "²"],  # passes str.isdigit
        ["cursor", "set", "9" * 5000],  # cannot even be parsed as an int
        ["backfill", "--max-rate", "inf", "--no-wait"],  # overflowed every worker's pacing
        ["backfill", "--max-requests", "1e400", "--no-wait"],
    ],
)
def test_operator_inputs_that_cannot_be_used_are_refused_before_anything_is_stored(
    state: tuple[StateStore, dict[str, str]], args: list[str]
) -> None:
    store, env = state
    result = runner.invoke(app, args, env={**env, "DICOMCAST_SOURCE_URL": "http://orthanc.test"})
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert store.cursor("default") == "30"
    assert store.backfill_limits() == {} or not store.backfill_limits()


def test_a_malformed_state_url_is_one_line_not_a_traceback() -> None:
    env = {"DICOMCAST_STATE_URL": "postgresql://u:secret@h:notaport/db"}
    result = runner.invoke(app, ["status", "--json"], env=env)
    assert result.exit_code == 2
    assert "Traceback" not in result.output and "secret" not in result.output
    assert "is not usable" in result.output
