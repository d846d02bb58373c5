"""The journal: MemBrane's source of truth, one SQLite file in WAL mode.

It owns every capture's state, the extractions with their raw model output,
rejected files, bench runs, promotions and the active model. Neo4j is only a
projection of it (`membrane sync` rebuilds the graph from here).

Capture state machine (captures are keyed by the sha256 of their bytes)::

    queued --claim--> extracting --record_extraction--> extracted
      ^                  |  \\--release (retryable; attempts+1, next_attempt_at)--> queued
      |                  |
      |   extracted --mark_projected--> projected --mark_done--> done
      |   extracted --mark_done (journal-only mode, no Neo4j)--> done
      |   extracted|projected|done --mark_retracted--> retracted
      |   any state but done/retracted --fail--> failed (stage, reason, hint)
      \\-- requeue_failed / enqueue of the same bytes again <-- failed

Retryable errors never change the state: `defer` (or `release` for a claim)
counts the attempt, keeps the error and the time of the next try, which the
caller computes (the pipeline owns the backoff policy and its settings).

Decisions (also in docs/design-notes.md, "Journal and inbox"):
- Durability: a capture's file leaves the inbox right after a commit, so that
  commit must survive a power cut, not just a process crash (WAL with NORMAL
  may lose the last commits on power loss, and the file would be gone from the
  inbox with no record of its facts). The default, synchronous=FULL, fsyncs
  every commit (about 2 ms each here, five per capture). The fast choice,
  as safe for that rule: synchronous="NORMAL" plus `sync()` (one fsync of the
  WAL) right before each file move, i.e. Inbox(before_move=journal.sync).
  Commits lost on a power cut under NORMAL are then only ones no file move
  depended on (claims, retries), which the daemon redoes from the inbox.
- Claims carry a lease and the claimant ("host:pid:process-token:worker"). At open, claims of
  dead processes on this host go back to queued at once (crash recovery);
  other expired leases are reclaimable by `claim`. A capture whose claim was
  lost this way `max_interrupted` times fails (stage "extract"): it is likely
  what kills the process, and must not crash-loop the daemon.
- Every transition is one BEGIN IMMEDIATE transaction, so two workers (threads
  or processes) never claim the same capture.
- One connection per thread (sqlite3 connections must not be shared while in
  a transaction); all are closed by `close()`.
- Times: ISO-8601 UTC strings for people and the graph (`ingested_at` is fixed
  at first enqueue and never changes); epoch seconds for due times and leases.

sqlite3 errors are translated into JournalError here, the one boundary.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from membrane.errors import JournalError, MembraneError, StaleClaim
from membrane.logs import get_logger

__all__ = [
    "CAPTURE_STATES",
    "CaptureRecord",
    "EnqueueResult",
    "ExtractionRecord",
    "Journal",
    "JournalError",
    "ModelRef",
    "ProjectionLag",
    "StaleClaim",
    "backoff_delay",
    "iso_utc",
]

log = get_logger(__name__)

CAPTURE_STATES = ("queued", "extracting", "extracted", "projected", "done", "failed", "retracted")
# States whose extraction is part of the graph (exported, synced).
FACT_STATES = ("extracted", "projected", "done")
DEFAULT_LEASE_S = 900.0
BUSY_TIMEOUT_MS = 30_000


def iso_utc(epoch: float | None = None) -> str:
    """``2026-01-02T03:04:05.123456Z``: fixed width, so strings sort by time."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def backoff_delay(attempts: int, base_s: float, max_s: float) -> float:
    """Exponential backoff: base * 2^(attempts-1) seconds, capped at max_s (attempts >= 1)."""
    return float(min(max_s, base_s * 2 ** max(0, min(attempts - 1, 60))))


@dataclass(frozen=True)
class ModelRef:
    """A model as "backend:name"; the name may itself contain colons (Ollama tags)."""

    backend: str
    name: str

    def __str__(self) -> str:
        return f"{self.backend}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Split at the FIRST colon: "ollama:qwen2.5:1.5b" -> ("ollama", "qwen2.5:1.5b")."""
        backend, sep, name = text.strip().partition(":")
        if not sep or not backend or not name:
            raise MembraneError(
                f"model {text!r} is not of the form backend:name",
                hint='Write models as "backend:name", e.g. "ollama:qwen2.5:1.5b" or "embedded:smollm2-135m".',
            )
        return cls(backend, name)


@dataclass(frozen=True)
class CaptureRecord:
    """One capture as the journal holds it."""

    sha256: str
    path: str  # the path it first (or last, for an edit) arrived at
    text: str
    metadata: Mapping[str, Any]
    state: str
    ingested_at: str  # ISO-8601 UTC, fixed at first enqueue
    updated_at: str
    attempts: int  # retryable failures (and interrupted claims) since the last success
    last_error: str | None
    stage: str | None  # failed: the stage that failed ("read", "extract", "project", ...)
    hint: str | None
    next_attempt_at: str | None  # ISO-8601 UTC; None: due now
    claimed_by: str | None
    # Times its extraction died in native code: the process (an interrupted claim) or the model's child.
    interrupted: int = 0


@dataclass(frozen=True)
class EnqueueResult:
    record: CaptureRecord
    created: bool  # False: the same bytes were already in the journal


@dataclass(frozen=True)
class ExtractionRecord:
    """One stored extraction: the validated facts and everything needed to reproduce them."""

    id: int
    sha256: str
    model: str
    backend: str
    prompt_version: str
    extraction: Mapping[str, Any]  # the validated Extraction as JSON data
    raw_outputs: tuple[str, ...]
    errors: tuple[str, ...]
    calls: int
    first_attempt_valid: bool
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    chunks: tuple[tuple[int, int], ...]
    created_at: str


@dataclass(frozen=True)
class ProjectionLag:
    """Captures extracted but not yet projected into Neo4j."""

    count: int
    oldest_extracted_at: str | None
    oldest_age_s: float | None


# ---------------------------------------------------------------- migrations
# Applied in order, once each, recorded by name in `_migrations`. Append only.


def _m001_captures(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE captures (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            sha256 TEXT NOT NULL UNIQUE,
            path TEXT NOT NULL,
            text TEXT NOT NULL,
            metadata TEXT NOT NULL DEFAULT '{}',
            state TEXT NOT NULL,
            ingested_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            interrupted INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            stage TEXT,
            hint TEXT,
            next_attempt_at REAL,
            claimed_by TEXT,
            lease_until REAL,
            extracted_at TEXT
        )"""
    )
    db.execute("CREATE INDEX captures_state ON captures(state, seq)")
    db.execute(
        """CREATE TABLE capture_paths (
            sha256 TEXT NOT NULL REFERENCES captures(sha256),
            path TEXT NOT NULL,
            seen_at TEXT NOT NULL,
            PRIMARY KEY (sha256, path)
        )"""
    )
    db.execute("CREATE INDEX capture_paths_path ON capture_paths(path, seen_at)")


def _m002_extractions(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE extractions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sha256 TEXT NOT NULL REFERENCES captures(sha256),
            model TEXT NOT NULL,
            backend TEXT NOT NULL,
            prompt_version TEXT NOT NULL,
            extraction TEXT NOT NULL,
            raw_outputs TEXT NOT NULL,
            errors TEXT NOT NULL,
            calls INTEGER NOT NULL,
            first_attempt_valid INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            seconds REAL NOT NULL,
            chunks TEXT NOT NULL,
            created_at TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX extractions_sha ON extractions(sha256, id)")


def _m003_rejections(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE rejections (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            path TEXT NOT NULL,
            stage TEXT NOT NULL,
            reason TEXT NOT NULL,
            hint TEXT NOT NULL,
            created_at TEXT NOT NULL
        )"""
    )


def _m004_models(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE promotions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            kind TEXT NOT NULL,
            previous TEXT,
            new TEXT NOT NULL,
            reason TEXT NOT NULL,
            evidence TEXT NOT NULL
        )"""
    )
    db.execute(
        """CREATE TABLE bench_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            created_at TEXT NOT NULL,
            report TEXT NOT NULL
        )"""
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _m001_captures,
    _m002_extractions,
    _m003_rejections,
    _m004_models,
)


def migrate(db: sqlite3.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns the names applied."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    applied: list[str] = []
    for migration in MIGRATIONS:
        name = migration.__name__.lstrip("_")
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                db.execute("COMMIT")
                continue
            migration(db)
            db.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, iso_utc()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


# ---------------------------------------------------------------- the journal


@functools.cache
def _process_token() -> str:
    """Random per process: tells this process from an earlier one that had the same pid
    (pids repeat in containers, where a restarted daemon often gets its old pid)."""
    return uuid.uuid4().hex[:12]


def _claimant(worker: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_process_token()}:{worker}"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class Journal:
    """The SQLite journal. Thread-safe; several processes may share the file.

    Use as a context manager or call close(). Every public method is one
    transaction; JournalError is the only exception it raises on purpose.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_interrupted: int = 3,
        synchronous: str = "FULL",
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._max_interrupted = max_interrupted
        self._synchronous = synchronous
        self._local = threading.local()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create the journal folder {str(self.path.parent)!r}: {exc.strerror}") from exc
        with self._translate("migrate"):
            self.migrations_applied = migrate(self._db())
        self.recover_claims()

    # -- connections and transactions

    def _db(self) -> sqlite3.Connection:
        if self._closed:
            raise JournalError("the journal is closed")
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            with self._translate("open"):
                # isolation_level=None: we issue BEGIN IMMEDIATE ourselves.
                db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
                db.row_factory = sqlite3.Row
                db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                db.execute("PRAGMA journal_mode = WAL")
                db.execute(f"PRAGMA synchronous = {self._synchronous}")
                db.execute("PRAGMA foreign_keys = ON")
            self._local.db = db
            with self._lock:
                self._connections.append((threading.current_thread(), db))
                self._close_orphans()
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
    def _translate(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise JournalError(f"journal {str(self.path)!r}: {action} failed: {exc}") from exc

    @contextmanager
    def _write(self, action: str) -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE transaction: the write lock is taken before any read."""
        db = self._db()
        with self._translate(action):
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._translate("read"):
            return self._db().execute(sql, params).fetchall()

    def sync(self) -> None:
        """Make every committed transaction durable; call it before a file leaves the inbox.

        Under synchronous=FULL every commit already is, and this does nothing.
        Under NORMAL it fsyncs the WAL file: one fsync per capture instead of
        one per transition (pass it to Inbox(before_move=...)).
        """
        if self._synchronous.upper() == "FULL":
            return
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:  # checkpointed and removed: the database file holds everything
            return
        except OSError as exc:
            raise JournalError(f"cannot open {str(wal)!r} to sync it: {exc.strerror}") from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise JournalError(f"cannot sync {str(wal)!r}: {exc.strerror}") from exc
        finally:
            os.close(fd)

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

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> float:
        return self._clock()

    # -- captures: enqueue and look-up

    def enqueue(self, sha256: str, path: str, text: str, metadata: Mapping[str, Any] | None = None) -> EnqueueResult:
        """Record a capture read from `path`; the same bytes again only add the path.

        A known capture keeps its state (done stays done: not extracted again),
        except: failed goes back to queued (the person moved it back), unless
        it failed because it kept killing the process (its file may simply
        still be in the inbox after the last crash: queuing it again would
        crash-loop); and retracted goes back to extracted when an extraction
        is stored (the facts are re-projected without calling the model).
        """
        now = self._now()
        meta = json.dumps(dict(metadata or {}), ensure_ascii=False, sort_keys=True, default=str)
        with self._write("enqueue") as db:
            row = db.execute("SELECT state, interrupted FROM captures WHERE sha256 = ?", (sha256,)).fetchone()
            created = row is None
            if created:
                db.execute(
                    """INSERT INTO captures (sha256, path, text, metadata, state, ingested_at, updated_at)
                       VALUES (?, ?, ?, ?, 'queued', ?, ?)""",
                    (sha256, path, text, meta, iso_utc(now), iso_utc(now)),
                )
            elif row["state"] == "retracted" or (row["state"] == "failed" and not self._crash_failed(row)):
                has_extraction = db.execute("SELECT 1 FROM extractions WHERE sha256 = ?", (sha256,)).fetchone()
                state = "extracted" if row["state"] == "retracted" and has_extraction else "queued"
                db.execute(
                    """UPDATE captures SET state = ?, path = ?, metadata = ?, updated_at = ?, attempts = 0,
                       interrupted = 0, last_error = NULL, stage = NULL, hint = NULL, next_attempt_at = NULL
                       WHERE sha256 = ?""",
                    (state, path, meta, iso_utc(now), sha256),
                )
            db.execute(
                "INSERT INTO capture_paths (sha256, path, seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT (sha256, path) DO UPDATE SET seen_at = excluded.seen_at",
                (sha256, path, iso_utc(now)),
            )
            record = self._get(db, sha256)
        assert record is not None
        log.debug("capture_enqueued", sha256=sha256, path=path, created=created, state=record.state)
        return EnqueueResult(record, created)

    def _crash_failed(self, row: sqlite3.Row) -> bool:
        return bool(row["interrupted"] >= self._max_interrupted)

    def get(self, sha256: str) -> CaptureRecord | None:
        """The capture with this sha256, or None."""
        with self._translate("read"):
            return self._get(self._db(), sha256)

    def _get(self, db: sqlite3.Connection, sha256: str) -> CaptureRecord | None:
        row = db.execute("SELECT * FROM captures WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else _capture(row)

    def paths(self, sha256: str) -> list[str]:
        """Every path this capture's bytes arrived at, oldest first."""
        rows = self._read("SELECT path FROM capture_paths WHERE sha256 = ? ORDER BY seen_at, path", (sha256,))
        return [row["path"] for row in rows]

    def last_capture_for_path(self, path: str, *, exclude: str | None = None) -> CaptureRecord | None:
        """The most recent capture seen at `path` whose facts are in the graph (extracted,
        projected or done), other than `exclude`: the old version to retract on an edit."""
        placeholders = ",".join("?" * len(FACT_STATES))
        rows = self._read(
            f"""SELECT c.* FROM capture_paths p JOIN captures c ON c.sha256 = p.sha256
                WHERE p.path = ? AND c.state IN ({placeholders}) AND c.sha256 IS NOT ?
                ORDER BY p.seen_at DESC, c.seq DESC LIMIT 1""",
            (path, *FACT_STATES, exclude),
        )
        return _capture(rows[0]) if rows else None

    def captures(self, states: Sequence[str] | None = None, *, limit: int | None = None) -> list[CaptureRecord]:
        """Captures in the given states (all when None), oldest first."""
        sql, params = "SELECT * FROM captures", []
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            params.extend(states)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [_capture(row) for row in self._read(sql, params)]

    # -- the state machine

    def claim(self, worker: str = "worker", *, lease_s: float = DEFAULT_LEASE_S) -> CaptureRecord | None:
        """Take the oldest due queued capture for extraction (-> extracting), or None.

        Also takes an 'extracting' capture whose lease ran out (its claimant
        hung or died elsewhere); that counts as an interruption.
        """
        now = self._now()
        claimant = _claimant(worker)
        with self._write("claim") as db:
            self._expire_leases(db, now)
            row = db.execute(
                """SELECT sha256 FROM captures
                   WHERE state = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= ?)
                   ORDER BY seq LIMIT 1""",
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                """UPDATE captures SET state = 'extracting', claimed_by = ?, lease_until = ?, updated_at = ?
                   WHERE sha256 = ?""",
                (claimant, now + lease_s, iso_utc(now), row["sha256"]),
            )
            record = self._get(db, row["sha256"])
        log.debug("capture_claimed", sha256=row["sha256"], worker=claimant)
        return record

    def renew(self, sha256: str, *, lease_s: float = DEFAULT_LEASE_S) -> None:
        """Extend the lease of a capture this process is extracting (long model calls)."""
        now = self._now()
        with self._write("renew") as db:
            self._require(db, sha256, ("extracting",))
            db.execute("UPDATE captures SET lease_until = ? WHERE sha256 = ?", (now + lease_s, sha256))

    def release(self, sha256: str, *, error: str, delay_s: float, crashed: bool = False) -> CaptureRecord:
        """A retryable error while extracting: back to queued, due again after delay_s.

        crashed: the model's process died on it (ModelCrashed); counted with the interruptions.
        """
        return self._retry(sha256, ("extracting",), "queued", error, delay_s, crashed=crashed)

    def defer(self, sha256: str, *, error: str, delay_s: float) -> CaptureRecord:
        """A retryable error in a later stage (projection): same state, due again after delay_s."""
        record = self.get(sha256)
        if record is None:
            raise StaleClaim(f"capture {sha256} is not in the journal")
        return self._retry(sha256, (record.state,), record.state, error, delay_s)

    def _retry(self, sha256: str, states: tuple[str, ...], to: str, error: str, delay_s: float,
               *, crashed: bool = False) -> CaptureRecord:
        now = self._now()
        with self._write("retry") as db:
            self._require(db, sha256, states)
            db.execute(
                """UPDATE captures SET state = ?, attempts = attempts + 1, interrupted = interrupted + ?,
                   last_error = ?, next_attempt_at = ?, claimed_by = NULL, lease_until = NULL, updated_at = ?
                   WHERE sha256 = ?""",
                (to, int(crashed), error, now + max(0.0, delay_s), iso_utc(now), sha256),
            )
            record = self._get(db, sha256)
        assert record is not None
        log.info("capture_retry_scheduled", sha256=sha256, attempts=record.attempts, delay_s=delay_s, error=error)
        return record

    def record_extraction(
        self,
        sha256: str,
        *,
        model: str,
        backend: str,
        prompt_version: str,
        extraction: Mapping[str, Any],
        raw_outputs: Sequence[str],
        errors: Sequence[str] = (),
        calls: int = 1,
        first_attempt_valid: bool = True,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        seconds: float = 0.0,
        chunks: Sequence[Sequence[int]] = (),
    ) -> int:
        """Store a validated extraction and move the capture extracting -> extracted; returns its id.

        `extraction` is the validated Extraction as JSON data
        (``Extraction.model_dump(mode="json")``).
        """
        now = self._now()
        with self._write("record_extraction") as db:
            self._require(db, sha256, ("extracting",))
            cursor = db.execute(
                """INSERT INTO extractions (sha256, model, backend, prompt_version, extraction, raw_outputs,
                   errors, calls, first_attempt_valid, prompt_tokens, completion_tokens, seconds, chunks,
                   created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    sha256,
                    model,
                    backend,
                    prompt_version,
                    json.dumps(dict(extraction), ensure_ascii=False),
                    json.dumps(list(raw_outputs), ensure_ascii=False),
                    json.dumps(list(errors), ensure_ascii=False),
                    calls,
                    int(first_attempt_valid),
                    prompt_tokens,
                    completion_tokens,
                    seconds,
                    json.dumps([list(c) for c in chunks]),
                    iso_utc(now),
                ),
            )
            db.execute(
                """UPDATE captures SET state = 'extracted', extracted_at = ?, updated_at = ?, attempts = 0,
                   interrupted = 0, last_error = NULL, next_attempt_at = NULL, claimed_by = NULL,
                   lease_until = NULL WHERE sha256 = ?""",
                (iso_utc(now), iso_utc(now), sha256),
            )
        extraction_id = int(cursor.lastrowid or 0)
        log.info("capture_extracted", sha256=sha256, model=model, backend=backend, seconds=seconds, calls=calls)
        return extraction_id

    def mark_projected(self, sha256: str) -> None:
        """extracted -> projected: its facts are committed in Neo4j."""
        self._move(sha256, ("extracted",), "projected")

    def mark_done(self, sha256: str) -> None:
        """extracted|projected -> done: the capture's file has left the inbox (or there is none)."""
        self._move(sha256, ("extracted", "projected"), "done")

    def mark_retracted(self, sha256: str) -> None:
        """extracted|projected|done -> retracted: its file was deleted or replaced by an edit."""
        self._move(sha256, FACT_STATES, "retracted")

    def _move(self, sha256: str, states: tuple[str, ...], to: str) -> None:
        now = self._now()
        with self._write(f"mark_{to}") as db:
            self._require(db, sha256, states)
            db.execute(
                """UPDATE captures SET state = ?, updated_at = ?, attempts = 0, last_error = NULL,
                   next_attempt_at = NULL WHERE sha256 = ?""",
                (to, iso_utc(now), sha256),
            )
        log.debug("capture_state", sha256=sha256, state=to)

    def fail(self, sha256: str, *, stage: str, reason: str, hint: str = "") -> None:
        """Any live state -> failed (permanent): the file goes to failed/ with this reason and hint."""
        now = self._now()
        with self._write("fail") as db:
            self._require(db, sha256, ("queued", "extracting", "extracted", "projected"))
            db.execute(
                """UPDATE captures SET state = 'failed', stage = ?, last_error = ?, hint = ?, updated_at = ?,
                   claimed_by = NULL, lease_until = NULL, next_attempt_at = NULL WHERE sha256 = ?""",
                (stage, reason, hint, iso_utc(now), sha256),
            )
        log.warning("capture_failed", sha256=sha256, stage=stage, reason=reason)

    def requeue_failed(self, stage: str = "extract") -> int:
        """Failed captures of `stage` get another chance (after a promotion); returns how many.

        Stage "extract" (or any stage before it) goes back to queued; stage
        "project" goes back to extracted, since its extraction is stored.
        """
        now = self._now()
        to = "extracted" if stage == "project" else "queued"
        with self._write("requeue_failed") as db:
            cursor = db.execute(
                """UPDATE captures SET state = ?, stage = NULL, last_error = NULL, hint = NULL, attempts = 0,
                   interrupted = 0, next_attempt_at = NULL, updated_at = ? WHERE state = 'failed' AND stage = ?""",
                (to, iso_utc(now), stage),
            )
        count = cursor.rowcount
        log.info("captures_requeued", stage=stage, count=count)
        return count

    def _require(self, db: sqlite3.Connection, sha256: str, states: tuple[str, ...]) -> None:
        row = db.execute("SELECT state FROM captures WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            raise StaleClaim(f"capture {sha256} is not in the journal")
        if row["state"] not in states:
            raise StaleClaim(f"capture {sha256} is {row['state']}, expected {' or '.join(states)}")

    # -- crash recovery

    def recover_claims(self) -> int:
        """Claims held by dead processes on this host go back to queued; returns how many.

        Run at open. A capture interrupted `max_interrupted` times fails instead.
        """
        now = self._now()
        host = socket.gethostname()
        with self._write("recover_claims") as db:
            rows = db.execute("SELECT sha256, claimed_by FROM captures WHERE state = 'extracting'").fetchall()
            dead = [r["sha256"] for r in rows if _dead_claimant(r["claimed_by"], host)]
            for sha256 in dead:
                self._interrupt(db, sha256, now)
        if dead:
            log.warning("claims_recovered", count=len(dead))
        return len(dead)

    def _expire_leases(self, db: sqlite3.Connection, now: float) -> None:
        rows = db.execute(
            "SELECT sha256 FROM captures WHERE state = 'extracting' AND lease_until < ?", (now,)
        ).fetchall()
        for row in rows:
            self._interrupt(db, row["sha256"], now)

    def _interrupt(self, db: sqlite3.Connection, sha256: str, now: float) -> None:
        row = db.execute("SELECT interrupted FROM captures WHERE sha256 = ?", (sha256,)).fetchone()
        interrupted = row["interrupted"] + 1
        if interrupted >= self._max_interrupted:
            db.execute(
                """UPDATE captures SET state = 'failed', stage = 'extract', interrupted = ?, last_error = ?,
                   hint = ?, claimed_by = NULL, lease_until = NULL, updated_at = ? WHERE sha256 = ?""",
                (
                    interrupted,
                    f"extraction was interrupted {interrupted} times (the process died or hung)",
                    "This capture may crash or hang the model; split it or try another model, "
                    "then move it back to the inbox.",
                    iso_utc(now),
                    sha256,
                ),
            )
            return
        db.execute(
            """UPDATE captures SET state = 'queued', interrupted = ?, claimed_by = NULL, lease_until = NULL,
               updated_at = ? WHERE sha256 = ?""",
            (interrupted, iso_utc(now), sha256),
        )

    # -- extractions

    def latest_extraction(self, sha256: str) -> ExtractionRecord | None:
        """The newest stored extraction of this capture, or None."""
        rows = self._read("SELECT * FROM extractions WHERE sha256 = ? ORDER BY id DESC LIMIT 1", (sha256,))
        return _extraction(rows[0]) if rows else None

    def due_for_projection(self, *, limit: int = 100) -> list[CaptureRecord]:
        """Captures in 'extracted' whose next projection attempt is due, oldest first."""
        rows = self._read(
            """SELECT * FROM captures WHERE state = 'extracted'
               AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY seq LIMIT ?""",
            (self._now(), limit),
        )
        return [_capture(row) for row in rows]

    def facts(self, states: Sequence[str] = FACT_STATES) -> Iterator[tuple[CaptureRecord, ExtractionRecord]]:
        """Each capture in `states` with its latest extraction, oldest first: for sync and export."""
        placeholders = ",".join("?" * len(states))
        rows = self._read(
            f"""SELECT c.*, e.id AS e_id, e.model AS e_model, e.backend AS e_backend,
                e.prompt_version AS e_prompt_version, e.extraction AS e_extraction,
                e.raw_outputs AS e_raw_outputs, e.errors AS e_errors, e.calls AS e_calls,
                e.first_attempt_valid AS e_first_attempt_valid, e.prompt_tokens AS e_prompt_tokens,
                e.completion_tokens AS e_completion_tokens, e.seconds AS e_seconds, e.chunks AS e_chunks,
                e.created_at AS e_created_at
                FROM captures c JOIN extractions e ON e.id = (
                    SELECT MAX(id) FROM extractions WHERE sha256 = c.sha256)
                WHERE c.state IN ({placeholders}) ORDER BY c.seq""",
            tuple(states),
        )
        for row in rows:
            yield _capture(row), _extraction(row, prefix="e_", sha256=row["sha256"])

    def recorded_outputs(self) -> Iterator[tuple[str, str]]:
        """(text, raw output) pairs of successful extractions, for the replay backend.

        A single-chunk extraction gives (capture text, its last raw output, the
        valid one). A chunked one gives (chunk text, output) per chunk when each
        chunk took one call; chunked ones with repairs are skipped, since their
        outputs cannot be matched to chunks.
        """
        rows = self._read(
            """SELECT c.text, e.raw_outputs, e.chunks FROM extractions e JOIN captures c ON c.sha256 = e.sha256
               ORDER BY e.id"""
        )
        for row in rows:
            outputs: list[str] = json.loads(row["raw_outputs"])
            chunks: list[list[int]] = json.loads(row["chunks"])
            if not outputs:
                continue
            if len(chunks) <= 1:
                yield row["text"], outputs[-1]
            elif len(outputs) == len(chunks):
                for (start, end), output in zip(chunks, outputs, strict=True):
                    yield row["text"][start:end], output

    # -- rejections (files that never became captures)

    def record_rejection(self, path: str, *, reason: str, hint: str = "", stage: str = "read") -> None:
        """Remember a file refused before it became a capture (for `membrane status`)."""
        with self._write("record_rejection") as db:
            db.execute(
                "INSERT INTO rejections (path, stage, reason, hint, created_at) VALUES (?, ?, ?, ?, ?)",
                (path, stage, reason, hint, iso_utc(self._now())),
            )

    # -- status

    def counts(self) -> dict[str, int]:
        """Captures per state, every state present (zeros included)."""
        counts = dict.fromkeys(CAPTURE_STATES, 0)
        for row in self._read("SELECT state, COUNT(*) AS n FROM captures GROUP BY state"):
            counts[row["state"]] = row["n"]
        return counts

    def pending(self) -> int:
        """Captures still to be worked on (queued, extracting, extracted): zero means idle."""
        rows = self._read("SELECT COUNT(*) AS n FROM captures WHERE state IN ('queued', 'extracting', 'extracted')")
        return int(rows[0]["n"])

    def recent_errors(self, limit: int = 10) -> list[dict[str, Any]]:
        """Newest first: failed captures, captures waiting to retry, and rejected files."""
        rows = self._read(
            """SELECT * FROM (
                 SELECT updated_at AS time, sha256, path, state, COALESCE(stage, '') AS stage,
                        last_error AS reason, COALESCE(hint, '') AS hint, attempts, next_attempt_at
                 FROM captures WHERE last_error IS NOT NULL
                 UNION ALL
                 SELECT created_at, NULL, path, 'rejected', stage, reason, hint, 0, NULL FROM rejections
               ) ORDER BY time DESC LIMIT ?""",
            (limit,),
        )
        errors = []
        for row in rows:
            item = dict(row)
            item["next_attempt_at"] = _iso_or_none(item["next_attempt_at"])
            errors.append(item)
        return errors

    def projection_lag(self) -> ProjectionLag:
        """How many captures are extracted but not projected, and the age of the oldest."""
        row = self._read("SELECT COUNT(*) AS n, MIN(extracted_at) AS oldest FROM captures WHERE state = 'extracted'")[0]
        oldest: str | None = row["oldest"]
        age = None
        if oldest is not None:
            extracted = datetime.strptime(oldest, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            age = max(0.0, self._now() - extracted.timestamp())
        return ProjectionLag(int(row["n"]), oldest, age)

    # -- the active model, promotions, bench runs

    def _champions(self, db: sqlite3.Connection) -> list[str]:
        """Replay promotions into the stack of champions; the top is active."""
        stack: list[str] = []
        for row in db.execute("SELECT kind, previous, new FROM promotions ORDER BY id"):
            if row["kind"] == "rollback":
                if stack:
                    stack.pop()
                continue
            if not stack and row["previous"]:
                stack.append(row["previous"])
            stack.append(row["new"])
        return stack

    def active_model(self) -> ModelRef | None:
        """The promoted champion, or None (then the configured [model] is active)."""
        with self._translate("active_model"):
            stack = self._champions(self._db())
        return ModelRef.parse(stack[-1]) if stack else None

    def set_active_model(
        self, ref: ModelRef, *, reason: str, evidence: Mapping[str, Any], replacing: ModelRef | None = None
    ) -> None:
        """Make `ref` the champion, recording a promotion (previous, new, reason, evidence, time).

        `replacing` names the champion in effect when none was promoted yet (the
        configured model), so that a rollback can return to it.
        """
        with self._write("set_active_model") as db:
            stack = self._champions(db)
            previous = stack[-1] if stack else (str(replacing) if replacing else None)
            self._insert_promotion(db, "promote", previous, str(ref), reason, evidence)
        log.info("model_promoted", previous=previous, new=str(ref), reason=reason)

    def rollback_active_model(self, *, reason: str) -> ModelRef:
        """Restore the previous champion (recorded as a promotion of kind 'rollback')."""
        with self._write("rollback_active_model") as db:
            stack = self._champions(db)
            if len(stack) < 2:
                raise MembraneError(
                    "there is no previous champion to roll back to",
                    hint="Promote a model explicitly with `membrane promote NAME`.",
                )
            self._insert_promotion(db, "rollback", stack[-1], stack[-2], reason, {})
        log.info("model_rolled_back", previous=stack[-1], new=stack[-2], reason=reason)
        return ModelRef.parse(stack[-2])

    def _insert_promotion(
        self,
        db: sqlite3.Connection,
        kind: str,
        previous: str | None,
        new: str,
        reason: str,
        evidence: Mapping[str, Any],
    ) -> None:
        db.execute(
            "INSERT INTO promotions (created_at, kind, previous, new, reason, evidence) VALUES (?, ?, ?, ?, ?, ?)",
            (iso_utc(self._now()), kind, previous, new, reason, json.dumps(dict(evidence), default=str)),
        )

    def promotions(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first: id, created_at, kind ("promote" or "rollback"), previous, new, reason, evidence."""
        rows = self._read("SELECT * FROM promotions ORDER BY id DESC LIMIT ?", (limit,))
        return [{**dict(row), "evidence": json.loads(row["evidence"])} for row in rows]

    def record_bench_run(self, report: Mapping[str, Any]) -> int:
        """Store a bench report (JSON data); returns its id."""
        with self._write("record_bench_run") as db:
            cursor = db.execute(
                "INSERT INTO bench_runs (created_at, report) VALUES (?, ?)",
                (iso_utc(self._now()), json.dumps(dict(report), default=str)),
            )
        return int(cursor.lastrowid or 0)

    def bench_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        """Newest first: id, created_at, report."""
        rows = self._read("SELECT * FROM bench_runs ORDER BY id DESC LIMIT ?", (limit,))
        return [{"id": row["id"], "created_at": row["created_at"], "report": json.loads(row["report"])} for row in rows]


# ---------------------------------------------------------------- rows -> records


def _iso_or_none(epoch: float | None) -> str | None:
    return None if epoch is None else iso_utc(epoch)


def _dead_claimant(claimed_by: str | None, host: str) -> bool:
    if not claimed_by:
        return True
    claim_host, pid_text, token, _worker = (claimed_by.split(":", 3) + ["", "", ""])[:4]
    if claim_host != host or not pid_text.isdigit():
        return False  # another machine's claim: only its lease can expire it
    if int(pid_text) == os.getpid():
        return token != _process_token()
    return not _process_alive(int(pid_text))


def _capture(row: sqlite3.Row) -> CaptureRecord:
    return CaptureRecord(
        sha256=row["sha256"],
        path=row["path"],
        text=row["text"],
        metadata=json.loads(row["metadata"]),
        state=row["state"],
        ingested_at=row["ingested_at"],
        updated_at=row["updated_at"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        stage=row["stage"],
        hint=row["hint"],
        next_attempt_at=_iso_or_none(row["next_attempt_at"]),
        claimed_by=row["claimed_by"],
        interrupted=row["interrupted"],
    )


def _extraction(row: sqlite3.Row, *, prefix: str = "", sha256: str | None = None) -> ExtractionRecord:
    def col(name: str) -> Any:
        return row[prefix + name]

    return ExtractionRecord(
        id=col("id"),
        sha256=sha256 or col("sha256"),
        model=col("model"),
        backend=col("backend"),
        prompt_version=col("prompt_version"),
        extraction=json.loads(col("extraction")),
        raw_outputs=tuple(json.loads(col("raw_outputs"))),
        errors=tuple(json.loads(col("errors"))),
        calls=col("calls"),
        first_attempt_valid=bool(col("first_attempt_valid")),
        prompt_tokens=col("prompt_tokens"),
        completion_tokens=col("completion_tokens"),
        seconds=col("seconds"),
        chunks=tuple((int(a), int(b)) for a, b in json.loads(col("chunks"))),
        created_at=col("created_at"),
    )
