"""The deletion budget: how many studies a source may delete from FHIR per hour before an
operator must approve the rest (rclone's `--max-delete`, Kubernetes' disruption budgets).

A mass deletion is far more often a mistake (an archive restored from an old backup, a
misrouted proxy, a storage volume not mounted) than a real purge: past the budget nothing
is deleted, the study is `held`, and `dicomcast deletions` decides. The budget is counted
in the state DB, so it holds for every worker sharing it: on PostgreSQL the source's row is
locked while one worker counts and takes a slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from dicomcast.model import StudyTask
from dicomcast.state.db import Database, changed
from dicomcast.state.models import DeletionRow, SourceRow, StudyRow

HOUR = 3600.0


@dataclass(frozen=True)
class HeldDeletion:
    """A study gone from its source whose deletion from FHIR waits for an operator."""

    source: str
    study_key: str
    study_uid: str | None
    held_at: float | None
    fhir_imagingstudy_id: str | None


class _Spent(Exception):
    """The slot just written was one too many: roll it back."""


def _spent(session: Session, source: str, now: float) -> int:
    return int(
        session.scalar(
            select(func.count()).where(
                DeletionRow.source == source,
                DeletionRow.at > now - HOUR,
                DeletionRow.approved == 0,
            )
        )
        or 0
    )


class Deletions:
    """Budgeted deletions and the operators' decisions on held ones."""

    db: Database

    def take_deletion(self, task: StudyTask, budget: int | None, now: float | None = None) -> bool:
        """Take one of the source's deletions of the last hour, and log it; False when the
        budget (None: unlimited) is spent. An approved study always gets one.

        The slot is written first and counted after, in one transaction: the write holds
        SQLite's one write lock, so two workers can never both take the last slot; on
        PostgreSQL the source's row is locked first for the same reason."""
        now = time.time() if now is None else now
        counted = budget is not None and not task.deletion_approved
        try:
            with self.db.write("take_deletion") as session:
                if counted and self.db.dialect == "postgresql":
                    session.execute(
                        select(SourceRow.name)
                        .where(SourceRow.name == task.source)
                        .with_for_update()
                    )
                session.add(
                    DeletionRow(
                        source=task.source,
                        study_key=task.study_key,
                        study_uid=task.study_uid,
                        at=now,
                        approved=0 if counted or budget is None else 1,
                    )
                )
                session.flush()
                if counted and _spent(session, task.source, now) > (budget or 0):
                    raise _Spent
        except _Spent:
            return False
        return True

    def deletions_spent(self, source: str, now: float | None = None) -> int:
        """Deletions of the last hour that count against the budget."""
        now = time.time() if now is None else now
        with self.db.read("deletions_spent") as session:
            return _spent(session, source, now)

    def finish_held(self, task: StudyTask, now: float | None = None) -> bool:
        """Record a deletion held over budget: FHIR untouched, the study waits for an
        operator. Newer data that came meanwhile is tried at once instead."""
        now = time.time() if now is None else now
        free = {"claimed_by": None, "claimed_until": None}
        with self.db.write("finish_held") as session:
            held = changed(
                session,
                update(StudyRow)
                .where(StudyRow.id == task.id, StudyRow.generation == task.generation)
                .values(status="held", held_at=now, next_attempt_at=None, **free),
            )
            if not held:
                session.execute(
                    update(StudyRow)
                    .where(StudyRow.id == task.id)
                    .values(next_attempt_at=now, **free)
                )
        return bool(held)

    def held_deletions(self, source: str) -> list[HeldDeletion]:
        with self.db.read("held_deletions") as session:
            rows = session.scalars(
                select(StudyRow)
                .where(StudyRow.source == source, StudyRow.status == "held")
                .order_by(StudyRow.held_at, StudyRow.id)
            ).all()
            return [
                HeldDeletion(r.source, r.study_key, r.study_uid, r.held_at, r.fhir_imagingstudy_id)
                for r in rows
            ]

    def decide_deletions(
        self, source: str, key: str | None, *, approve: bool, now: float | None = None
    ) -> int:
        """Approve held deletions (they go ahead at once, past the budget) or reject them
        (FHIR is kept as it is until the study changes again); `key` None: every held one.
        Returns how many studies were decided."""
        now = time.time() if now is None else now
        where = [StudyRow.source == source, StudyRow.status == "held"]
        if key is not None:
            where.append((StudyRow.study_key == key) | (StudyRow.study_uid == key))
        if approve:
            values = {
                "status": "dirty",
                "deletion": "approved",
                "generation": StudyRow.generation + 1,
                "attempts": 0,
                "next_attempt_at": now,
                "dirty_since": func.coalesce(StudyRow.dirty_since, now),
            }
        else:
            values = {"status": "kept", "deletion": None, "next_attempt_at": None}
        with self.db.write("decide_deletions") as session:
            return changed(session, update(StudyRow).where(and_(*where)).values(**values))
