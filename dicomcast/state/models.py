"""Tables of the state database. Times are UTC epoch seconds (float): portable and easy to
compare on SQLite and PostgreSQL alike. The schema is owned by the Alembic migrations in
`migrations/`; change both together."""

from __future__ import annotations

from sqlalchemy import Float, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class SourceRow(Base):
    """One followed DICOM server: where its feed was read up to, and how far the feed goes."""

    __tablename__ = "sources"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    cursor: Mapped[str | None] = mapped_column(String(200))
    feed_head: Mapped[str | None] = mapped_column(String(200))
    last_poll_at: Mapped[float | None] = mapped_column(Float)
    last_reconcile_at: Mapped[float | None] = mapped_column(Float)
    last_success_at: Mapped[float | None] = mapped_column(Float)
    resets: Mapped[int] = mapped_column(Integer, default=0)
    holder: Mapped[str | None] = mapped_column(String(100))  # the worker tailing it now
    held_until: Mapped[float | None] = mapped_column(Float)  # its lease; renewed each cycle
    feed_error: Mapped[str | None] = mapped_column(Text)  # a stored value it cannot use (0009)


class StudyRow(Base):
    """One study of one source: its place in the dirty set and what was last written to FHIR.

    `generation` grows each time the study is marked dirty; a sync that started at an older
    generation must not mark it clean, because newer data arrived while it ran.
    """

    __tablename__ = "studies"
    __table_args__ = (UniqueConstraint("source", "study_key", name="uq_studies_source_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100), index=True)
    study_key: Mapped[str] = mapped_column(String(200))
    study_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    # dirty | clean | failed | held (its deletion awaits approval) | kept (deletion rejected)
    status: Mapped[str] = mapped_column(String(16), index=True)
    generation: Mapped[int] = mapped_column(Integer, default=1)
    dirty_since: Mapped[float | None] = mapped_column(Float)
    event_time: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float | None] = mapped_column(Float, index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    error_kind: Mapped[str | None] = mapped_column(String(40))
    error_status: Mapped[int | None] = mapped_column(Integer)  # HTTP status, when one came
    failed_at: Mapped[float | None] = mapped_column(Float)  # when the last attempt failed
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[float | None] = mapped_column(Float)
    content_hash: Mapped[str | None] = mapped_column(String(64))
    fhir_patient_id: Mapped[str | None] = mapped_column(String(64))
    fhir_imagingstudy_id: Mapped[str | None] = mapped_column(String(64))
    instance_count: Mapped[int | None] = mapped_column(Integer)
    warnings: Mapped[str | None] = mapped_column(Text)
    last_synced_at: Mapped[float | None] = mapped_column(Float)
    match_key: Mapped[str | None] = mapped_column(String(300))  # FHIR `identifier=` token
    error_detail: Mapped[str | None] = mapped_column(Text)  # the server's words: may hold PHI
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # 1: backfill
    backfill: Mapped[int | None] = mapped_column(Integer, index=True)  # the run that marked it
    seen_count: Mapped[int | None] = mapped_column(Integer)  # count when listed or failed (0008)
    listed_identity: Mapped[str | None] = mapped_column(String(32))  # patient digest (0009)
    deletion: Mapped[str | None] = mapped_column(String(16))  # "approved" by an operator
    held_at: Mapped[float | None] = mapped_column(Float)  # its deletion was held (over budget)


class DeletionRow(Base):
    """A study a source deleted from FHIR (migration 0008): the hourly budget counts these."""

    __tablename__ = "deletions"
    __table_args__ = (Index("ix_deletions_source_at", "source", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100))
    study_key: Mapped[str] = mapped_column(String(200))
    study_uid: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)
    approved: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class WorkerRow(Base):
    """A worker's last poll (migration 0007): how many share a deployment's limits."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    seen_at: Mapped[float] = mapped_column(Float)
    instance: Mapped[str | None] = mapped_column(String(200))  # host:pid (migration 0010)


class BackfillRow(Base):
    """One `dicomcast backfill` run (migration 0006)."""

    __tablename__ = "backfills"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100), index=True)
    since: Mapped[str | None] = mapped_column(String(8))  # YYYYMMDD StudyDate bounds
    until: Mapped[str | None] = mapped_column(String(8))
    max_rate: Mapped[float | None] = mapped_column(Float)  # studies/s, all workers
    max_requests: Mapped[float | None] = mapped_column(Float)  # FHIR requests/s, all workers
    after: Mapped[str | None] = mapped_column(String(200))  # where the listing resumes
    listed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    marked: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    started_at: Mapped[float] = mapped_column(Float)
    listed_at: Mapped[float | None] = mapped_column(Float)  # the listing reached its end
    finished_at: Mapped[float | None] = mapped_column(Float)  # every marked study settled


class ContributionRow(Base):
    """One source's mapped part of a study several sources may hold (see migration 0003)."""

    __tablename__ = "contributions"
    __table_args__ = (UniqueConstraint("source", "study_key", name="uq_contributions_source_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100))
    study_key: Mapped[str] = mapped_column(String(200))
    match_key: Mapped[str] = mapped_column(String(300), index=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)  # zlib-compressed JSON
    updated_at: Mapped[float] = mapped_column(Float)


class FeedSkipRow(Base):
    """A feed entry that could not be used, skipped so the feed goes on (migration 0004)."""

    __tablename__ = "feed_skips"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100), index=True)
    position: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(String(500))
    at: Mapped[float] = mapped_column(Float)


class IdentityRow(Base):
    """The one row naming this state database, written when it was created."""

    __tablename__ = "identity"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)


class ReceivedRow(Base):
    """An instance header a C-STORE listener received (migration 0005)."""

    __tablename__ = "received_instances"
    __table_args__ = (
        UniqueConstraint("source", "sop_uid", name="uq_received_source_sop"),
        Index("ix_received_source_key", "source", "study_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(100))
    study_key: Mapped[str] = mapped_column(String(200))
    sop_uid: Mapped[str] = mapped_column(String(64))
    header: Mapped[bytes] = mapped_column(LargeBinary)  # zlib-compressed DICOM JSON
    received_at: Mapped[float] = mapped_column(Float)
