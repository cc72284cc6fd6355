"""Each source's mapped part of a study several sources hold: stored compressed, so that
whichever source syncs the study next can write the union of every part."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select

from dicomcast.model import Contribution
from dicomcast.state.db import Database, pack, unpack
from dicomcast.state.models import ContributionRow


class Contributions:
    """The `contributions` table, keyed by (source, study key), found by FHIR match key."""

    db: Database

    def put_contribution(
        self, source: str, key: str, match_key: str, body: dict[str, Any], now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        values = {"match_key": match_key, "body": pack(body), "updated_at": now}
        with self.db.write("put_contribution") as session:
            stmt = self.db.insert()(ContributionRow).values(source=source, study_key=key, **values)
            session.execute(
                stmt.on_conflict_do_update(index_elements=["source", "study_key"], set_=values)
            )

    def contributions(self, match_key: str) -> list[Contribution]:
        """Every source's part of the study with this FHIR match key."""
        with self.db.read("contributions") as session:
            rows = session.scalars(
                select(ContributionRow).where(ContributionRow.match_key == match_key)
            ).all()
            return [Contribution(r.source, r.study_key, unpack(r.body)) for r in rows]

    def drop_contribution(self, source: str, key: str) -> str | None:
        """Forget a source's part of a study; returns the study's match key, if it had one."""
        with self.db.write("drop_contribution") as session:
            row = session.scalars(
                select(ContributionRow).where(
                    ContributionRow.source == source, ContributionRow.study_key == key
                )
            ).first()
            if row is None:
                return None
            session.delete(row)
            return row.match_key
