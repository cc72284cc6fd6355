"""The state store: a feed page and its cursor are one transaction; a sync records its
result only for the generation it started from; a newer schema is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from dicomcast.errors import StateSchemaError, StateUnavailable
from dicomcast.model import DirtyMark, Written
from dicomcast.state.store import StateStore


def test_record_page_is_atomic_with_the_cursor() -> None:
    store = StateStore("sqlite://")
    store.migrate()
    store.ensure_source("s", "orthanc")

    def fail_the_cursor_update(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # The marks were written a moment ago in this same transaction; now the disk fills.
        if statement.lstrip().upper().startswith("UPDATE SOURCES"):
            raise sqlite3.OperationalError("database or disk is full")

    event.listen(store.engine, "before_cursor_execute", fail_the_cursor_update)
    with pytest.raises(StateUnavailable, match="record_page"):
        store.record_page("s", "50", "50", [DirtyMark("a"), DirtyMark("b")])
    event.remove(store.engine, "before_cursor_execute", fail_the_cursor_update)
    source = store.get_source("s")
    assert source is not None and source.cursor is None  # the cursor did not move
    assert store.counts("s") == {}  # and the marks written before it were rolled back
    # Proof that the fault is what stopped it: without it, both are recorded together.
    assert store.record_page("s", "50", "50", [DirtyMark("a"), DirtyMark("b")]) == 2
    assert store.cursor("s") == "50" and store.counts("s") == {"dirty": 2}


def test_newer_change_during_a_sync_keeps_the_study_dirty() -> None:
    store = StateStore("sqlite://")
    store.migrate()
    store.ensure_source("s", "orthanc")
    store.record_page("s", "1", "1", [DirtyMark("a", 100.0)])
    (task,) = store.claim_due("s", "w", 60, 10)
    assert store.claim_due("s", "other-worker", 60, 10) == []  # one holder at a time
    store.record_page("s", "2", "2", [DirtyMark("a", 200.0)])  # arrives mid-sync
    assert store.finish_clean(task, Written("1.2", "h", "p", "i", 3)) is False
    (again,) = store.due("s", 10)
    assert again.generation == task.generation + 1 and again.content_hash == "h"
    assert store.finish_clean(again, Written("1.2", "h", "p", "i", 3)) is True
    assert store.counts("s") == {"clean": 1}


def test_schema_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    store = StateStore(url)
    store.migrate()
    with store.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(StateSchemaError, match="newer"):
        StateStore(url).migrate()


def test_a_received_header_is_stored_with_its_dirty_mark_and_a_resend_replaces_it() -> None:
    store = StateStore("sqlite://")
    store.migrate()
    store.ensure_source("pacs", "dimse")
    header = {"00080018": {"vr": "UI", "Value": ["1.2.3.1"]}}
    store.receive("pacs", "20261130/1.2.3", "1.2.3", "1.2.3.1", header, now=100.0)
    store.receive("pacs", "20261130/1.2.3", "1.2.3", "1.2.3.2", {"a": 1}, now=101.0)
    store.receive("pacs", "20261130/1.2.3", "1.2.3", "1.2.3.1", {**header, "b": 2}, now=102.0)
    received = store.received("pacs", "20261130/1.2.3")
    assert len(received) == 2 and {**header, "b": 2} in received  # the resend replaced it
    assert store.last_received("pacs", "20261130/1.2.3") == 102.0
    [task] = store.due("pacs", 10, now=200.0)
    assert task.study_key == "20261130/1.2.3" and task.study_uid == "1.2.3"
    assert store.forget_received("pacs", "20261130/1.2.3") == 2
    assert store.received("pacs", "20261130/1.2.3") == []


def test_an_instance_resent_under_another_study_marks_the_study_it_left() -> None:
    store = StateStore("sqlite://")
    store.migrate()
    store.ensure_source("pacs", "dimse")
    store.receive("pacs", "20261130/1.2.3", "1.2.3", "1.2.3.1", {"a": 1}, now=100.0)
    store.receive("pacs", "20261130/1.2.3", "1.2.3", "1.2.3.2", {"a": 2}, now=100.0)
    for task in store.due("pacs", 10, now=200.0):
        store.finish_clean(task, Written("1.2.3", "h", "p", "s", 2), now=201.0)
    assert store.due("pacs", 10, now=300.0) == []
    store.receive("pacs", "20261130/1.2.4", "1.2.4", "1.2.3.2", {"a": 3}, now=400.0)
    due = {task.study_key for task in store.due("pacs", 10, now=500.0)}
    assert due == {"20261130/1.2.3", "20261130/1.2.4"}  # the study it left lists it no more
    assert len(store.received("pacs", "20261130/1.2.3")) == 1
    assert store.drop_received("pacs", ["1.2.3.1"]) == 1


def test_schema_head_names_the_newest_migration() -> None:
    from alembic.script import ScriptDirectory

    from dicomcast.state.db import SCHEMA_HEAD

    store = StateStore("sqlite://")
    try:
        scripts = ScriptDirectory.from_config(store.db._alembic())
        assert set(scripts.get_heads()) == {SCHEMA_HEAD}  # bump it with every migration
        assert store.migrate() is True  # new: migrated by alembic
        assert store.migrate() is False  # at head: alembic not needed
        assert store.schema_revision() == {SCHEMA_HEAD}
    finally:
        store.close()


def test_a_migration_cut_short_leaves_nothing_the_next_start_trips_on(tmp_path: Path) -> None:
    """A worker killed while it creates the schema (seen: kill -9 at a random moment)
    must not leave tables without alembic's version: the next start said `table sources
    already exists` and would never start again. The migration is one transaction."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore(url)
    created: list[str] = []

    def die_at_the_third_table(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("CREATE TABLE"):
            created.append(statement)
            if len(created) == 3:
                raise sqlite3.OperationalError("disk I/O error")  # as a kill would end it

    event.listen(store.engine, "before_cursor_execute", die_at_the_third_table)
    with pytest.raises(StateUnavailable, match="migrate"):
        store.migrate()
    store.close()
    again = StateStore(url)
    try:
        assert again.migrate() is True  # still new: nothing of the cut-short one was kept
        again.ensure_source("s", "orthanc")
        assert again.cursor("s") is None
    finally:
        again.close()
