"""The journal: MemBrane's source of truth, one SQLite file in WAL mode.

It owns every capture's state, the extractions with their raw model output,
rejected files, bench runs and the promotions that name the champion. Neo4j
is only a projection of it (`membrane sync` rebuilds the graph from here).

`Journal` is the one handle callers hold; each concern is a store in its own
module, all sharing the connection and transaction core:

    core.py         connections, BEGIN IMMEDIATE transactions, sqlite3 -> JournalError
    migrations.py   the schema, append-only migrations
    captures.py     captures, the state machine, pending graph retractions
    claims.py       claims, leases, recovery of dead claimants
    extractions.py  stored extraction results and the reads joining them to captures
    models.py       champion history (promotions, rollbacks) and bench runs
    status.py       rejected files and the status queries

Times: ISO-8601 UTC strings for people and the graph (`ingested_at` is fixed
at first enqueue and never changes); epoch seconds for due times and leases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from membrane.errors import JournalError, StaleClaim
from membrane.journal.captures import CAPTURE_STATES, FACT_STATES, CaptureRecord, EnqueueResult
from membrane.journal.claims import DEFAULT_LEASE_S, ClaimStore
from membrane.journal.extractions import ExtractionStore, StoredExtraction
from membrane.journal.migrations import migrate
from membrane.journal.models import ModelStore
from membrane.journal.status import ProjectionLag, StatusStore

__all__ = [
    "CAPTURE_STATES",
    "DEFAULT_LEASE_S",
    "FACT_STATES",
    "CaptureRecord",
    "EnqueueResult",
    "Journal",
    "JournalError",
    "ProjectionLag",
    "StaleClaim",
    "StoredExtraction",
    "read_recorded_outputs",
]


class Journal(ClaimStore, ExtractionStore, ModelStore, StatusStore):
    """The SQLite journal. Thread-safe; several processes may share the file.

    Use as a context manager or call close(). Every public method is one
    transaction; JournalError is the only exception it raises on purpose.
    Opening applies pending migrations and returns dead processes' claims.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time, max_interrupted: int = 3) -> None:
        super().__init__(path, clock=clock, max_interrupted=max_interrupted)
        with self._translate("migrate"):
            self.migrations_applied = migrate(self._db())
        self.recover_claims()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_recorded_outputs(path: Path) -> list[tuple[str, str]]:
    """The (text, raw output) pairs of the journal at `path`, for the replay backend (see recorded_outputs)."""
    with Journal(path) as journal:
        return list(journal.recorded_outputs())
