"""The state database as one object: cursors and leases, the dirty-study queue, per-source
contributions and reports, each kept in its own module, over one `Database`.

The facade keeps call sites short (`store.due(...)`, `store.summary(...)`); a caller that
needs only one part may be typed with that part's class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Engine

from dicomcast.state.backfills import Backfills
from dicomcast.state.contributions import Contributions
from dicomcast.state.cursors import Cursors
from dicomcast.state.db import Database
from dicomcast.state.deletions import Deletions
from dicomcast.state.queue import Queue
from dicomcast.state.received import Received
from dicomcast.state.reports import Reports

if TYPE_CHECKING:
    from dicomcast.config import Settings


class StateStore(Cursors, Queue, Contributions, Received, Reports, Backfills, Deletions):
    """All reads and writes of the state DB; each method is one short transaction, and a
    database failure in any of them is `StateUnavailable`."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        overflow: int | None = None,
        statement_timeout: float = 30.0,
    ) -> None:
        self.db = Database(
            url, pool_size=pool_size, overflow=overflow, statement_timeout=statement_timeout
        )
        self._success_at = {}

    @classmethod
    def for_settings(cls, settings: Settings) -> StateStore:
        """The state DB the settings name, with their pool size and statement timeout. On
        load the pool may grow by three connections per sync thread (a study's lock held
        while its part is recorded, and the listener or a probe alongside), so a small pool
        never starves the syncs."""
        return cls(
            settings.state_url,
            pool_size=settings.state_pool_size,
            overflow=max(settings.state_pool_size, 3 * settings.concurrency),
            statement_timeout=settings.state_statement_timeout,
        )

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def engine(self) -> Engine:
        return self.db.engine

    def migrate(self) -> bool:
        """Bring the schema up to date; True when the database was new."""
        return self.db.migrate()

    def schema_revision(self) -> set[str]:
        return self.db.schema_revision()

    def ping(self) -> None:
        self.db.ping()

    def close(self) -> None:
        self.db.close()
