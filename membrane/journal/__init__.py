"""The journal: MemBrane's source of truth, one SQLite file in WAL mode.

It owns every capture's state, the extractions with their raw model output,
rejected files, bench runs and the promotions that name the champion. Neo4j
is only a projection of it (`membrane sync` rebuilds the graph from here).

`Journal` is the one handle callers hold; it is composed of one store per
concern, each in its own module and all sharing one connection and
transaction core (`journal.captures.enqueue(...)`, `journal.claims.claim()`):

    core.py         connections, BEGIN IMMEDIATE transactions, sqlite3 -> JournalError
    migrations.py   the schema, append-only migrations
    captures.py     captures, the state machine (CaptureState, TRANSITIONS), pending graph retractions
    claims.py       claims, leases, recovery of dead claimants
    extractions.py  stored extraction results and the reads joining them to captures
    models.py       champion history (promotions, rollbacks) and bench runs
    status.py       rejected files and the status queries
    search.py       the search index (FTS5) `membrane search` reads without Neo4j

Times: ISO-8601 UTC strings for people and the graph (`ingested_at` is fixed
at first enqueue and never changes); epoch seconds for due times and leases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from membrane.errors import JournalError, StaleClaim
from membrane.journal.captures import (
    CAPTURE_STATES,
    FACT_STATES,
    PENDING_STATES,
    TRANSITIONS,
    CaptureRecord,
    CaptureState,
    CaptureStore,
    EnqueueResult,
)
from membrane.journal.claims import DEFAULT_LEASE_S, ClaimStore
from membrane.journal.core import JournalCore
from membrane.journal.extractions import ExtractionStore, StoredExtraction
from membrane.journal.migrations import migrate
from membrane.journal.models import ModelStore
from membrane.journal.search import SearchStore
from membrane.journal.status import ProjectionLag, StatusStore

__all__ = [
    "CAPTURE_STATES",
    "DEFAULT_LEASE_S",
    "FACT_STATES",
    "PENDING_STATES",
    "TRANSITIONS",
    "CaptureRecord",
    "CaptureState",
    "EnqueueResult",
    "Journal",
    "JournalError",
    "ProjectionLag",
    "StaleClaim",
    "StoredExtraction",
    "read_recorded_outputs",
]


class Journal:
    """The SQLite journal. Thread-safe; several processes may share the file.

    Use as a context manager or call close(). Every public method of its
    stores is one transaction; JournalError is the only exception they raise
    on purpose. Opening applies pending migrations and returns dead
    processes' claims.
    """

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time, max_interrupted: int = 3) -> None:
        self._core = JournalCore(path, clock=clock, max_interrupted=max_interrupted)
        self.captures = CaptureStore(self._core)
        self.claims = ClaimStore(self._core)
        self.extractions = ExtractionStore(self._core)
        self.models = ModelStore(self._core)
        self.status = StatusStore(self._core)
        self.search = SearchStore(self._core)
        with self._core.translate("migrate"):
            self.migrations_applied = migrate(self._core.db())
        self.claims.recover()

    @property
    def path(self) -> Path:
        return self._core.path

    def close(self) -> None:
        """Close every thread's connection; the journal cannot be used afterwards."""
        self._core.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_recorded_outputs(path: Path) -> list[tuple[str, str]]:
    """The (text, raw output) pairs of the journal at `path`, for the replay backend (see recorded_outputs)."""
    with Journal(path) as journal:
        return list(journal.extractions.recorded_outputs())
