"""The journal's connection and transaction core, which every store shares.

It owns the SQLite file's settings (WAL, synchronous=FULL, busy timeout,
foreign keys), one connection per thread, the BEGIN IMMEDIATE transaction,
and the translation of sqlite3 errors into JournalError (the one boundary).
Each store (captures, claims, ...) is a `Store` holding the one core of its
Journal; the stores are the core's only users.

Durability: a capture's file leaves the inbox right after a commit, so that
commit must survive a power cut, not just a process crash. synchronous=FULL
fsyncs every commit; it is the only mode (see docs/design-notes.md, "Journal
split").
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from membrane.errors import JournalError

__all__ = ["BUSY_TIMEOUT_MS", "JournalCore", "Store"]

BUSY_TIMEOUT_MS = 30_000


class JournalCore:
    """Connections and transactions over one SQLite file; thread-safe, and several
    processes may share the file. The stores add the tables' rules on top."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time, max_interrupted: int = 3) -> None:
        self.path = Path(path)
        self._clock = clock
        # A capture whose extraction died this many times fails (captures, claims).
        self.max_interrupted = max_interrupted
        self._local = threading.local()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create the journal folder {str(self.path.parent)!r}: {exc.strerror}") from exc

    def db(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise JournalError("the journal is closed")
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
            with self._lock:
                self._connections.append((threading.current_thread(), db))
                self._close_orphans()
        return db

    def _connect(self) -> sqlite3.Connection:
        with self.translate("open"):
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves.
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            db.row_factory = sqlite3.Row
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA foreign_keys = ON")
        return db

    def _close_orphans(self) -> None:
        """Close connections of threads that ended (worker pools come and go)."""
        alive = []
        for thread, db in self._connections:
            if thread.is_alive():
                alive.append((thread, db))
            else:
                db.close()
        self._connections = alive

    @contextmanager
    def translate(self, action: str) -> Iterator[None]:
        """sqlite3 errors inside become JournalError naming the file and `action`."""
        try:
            yield
        except sqlite3.Error as exc:
            raise JournalError(f"journal {str(self.path)!r}: {action} failed: {exc}") from exc

    @contextmanager
    def write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE transaction: the write lock is taken before any read."""
        db = self.db()
        with self.translate(action):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """The rows of one query, outside any transaction."""
        with self.translate("read"):
            return self.db().execute(sql, params).fetchall()

    def now(self) -> float:
        """Epoch seconds by the journal's clock (settable in tests)."""
        return self._clock()

    def close(self) -> None:
        """Close every thread's connection; the journal cannot be used afterwards."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for _thread, db in connections:
            try:
                db.close()
            except sqlite3.Error:  # closing a connection another thread is using; nothing to save
                pass


class Store:
    """One concern's tables and rules over the core its Journal shares with the other stores."""

    def __init__(self, core: JournalCore) -> None:
        self._core = core
