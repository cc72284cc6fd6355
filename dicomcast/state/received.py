"""Instance headers a C-STORE listener received, stored before the sender hears Success.

`receive` writes the header and the study's dirty mark in one transaction: once it
returns, a crash loses nothing the sender was told is stored. A header sent again
replaces the one before (a sender's retry, or a corrected instance)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, func, select

from dicomcast.model import DirtyMark
from dicomcast.state.db import Database, pack, unpack
from dicomcast.state.marks import mark
from dicomcast.state.models import ReceivedRow


class Received:
    """The `received_instances` table, by (source, study key)."""

    db: Database

    def receive(
        self,
        source: str,
        key: str,
        study_uid: str,
        sop_uid: str,
        header: dict[str, Any],
        now: float | None = None,
    ) -> None:
        """Store one instance's header and mark its study dirty, atomically. An instance
        sent again under another study is that study's now: the one it left is marked too,
        so its ImagingStudy stops listing it."""
        now = time.time() if now is None else now
        values = {"study_key": key, "header": pack(header), "received_at": now}
        with self.db.write("receive") as session:
            before = session.scalar(
                select(ReceivedRow.study_key).where(
                    ReceivedRow.source == source, ReceivedRow.sop_uid == sop_uid
                )
            )
            stmt = self.db.insert()(ReceivedRow).values(source=source, sop_uid=sop_uid, **values)
            session.execute(
                stmt.on_conflict_do_update(index_elements=["source", "sop_uid"], set_=values)
            )
            marks = [DirtyMark(key, now, study_uid)]
            if before is not None and before != key:
                marks.append(DirtyMark(before, now))
            mark(self.db, session, source, marks, now)

    def received(self, source: str, key: str) -> list[dict[str, Any]]:
        """The headers received for one study, oldest first."""
        with self.db.read("received") as session:
            blobs = session.scalars(
                select(ReceivedRow.header)
                .where(ReceivedRow.source == source, ReceivedRow.study_key == key)
                .order_by(ReceivedRow.id)
            ).all()
        return [header for blob in blobs if (header := unpack(blob))]

    def last_received(self, source: str, key: str) -> float | None:
        """When the study's latest instance arrived (None: never)."""
        with self.db.read("last_received") as session:
            return session.scalar(
                select(func.max(ReceivedRow.received_at)).where(
                    ReceivedRow.source == source, ReceivedRow.study_key == key
                )
            )

    def drop_received(self, source: str, sop_uids: list[str]) -> int:
        """Drop these instances' pushed headers (the PACS contradicts them)."""
        with self.db.write("drop_received") as session:
            result = session.execute(
                delete(ReceivedRow).where(
                    ReceivedRow.source == source, ReceivedRow.sop_uid.in_(sop_uids)
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def forget_received(self, source: str, key: str) -> int:
        """Drop a study's received headers (its PACS says the study is gone)."""
        with self.db.write("forget_received") as session:
            result = session.execute(
                delete(ReceivedRow).where(
                    ReceivedRow.source == source, ReceivedRow.study_key == key
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)
