"""Captures and their state machine (claims are in claims.py).

Captures are keyed by the sha256 of their bytes::

    queued --claim--> extracting --record_extraction--> extracted
      ^                  |  \\--release (retryable; attempts+1, next_attempt_at)--> queued
      |                  |
      |   extracted --mark_projected--> projected --mark_done--> done
      |   extracted --mark_done (journal-only mode, no Neo4j)--> done
      |   extracted|projected|done --mark_retracted--> retracted
      |   any state but done/retracted --fail--> failed (stage, reason, hint)
      \\-- requeue_failed / enqueue of the same bytes again <-- failed

A retraction, like a projection, has a journal half and a graph half:
mark_retracted(graph=True) leaves `graph_retraction_pending` set until
mark_graph_retracted, so the pipeline's project_due retries it after an outage
or a restart (retractions_due), and no one has to scan Neo4j to find it.

Retryable errors never change the state: `defer` (or `release` for a claim)
counts the attempt, keeps the error and the time of the next try, which the
caller computes (the pipeline owns the backoff policy and its settings).
Every transition is one BEGIN IMMEDIATE transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from membrane.clock import iso_utc
from membrane.errors import StaleClaim
from membrane.journal.core import JournalCore
from membrane.logs import get_logger

__all__ = ["CAPTURE_STATES", "FACT_STATES", "CaptureRecord", "CaptureStore", "EnqueueResult"]

log = get_logger(__name__)

CAPTURE_STATES = ("queued", "extracting", "extracted", "projected", "done", "failed", "retracted")
# States whose extraction is part of the graph (exported, synced).
FACT_STATES = ("extracted", "projected", "done")


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
    # Retracted in the journal, not yet in Neo4j (an outage, or a crash in between).
    graph_retraction_pending: bool = False


@dataclass(frozen=True)
class EnqueueResult:
    record: CaptureRecord
    created: bool  # False: the same bytes were already in the journal


class CaptureStore(JournalCore):
    """Enqueue, look-up and the state transitions after the claim."""

    # -- enqueue and look-up

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
                self._revive(db, sha256, row["state"], path, meta, now)
            db.execute(
                "INSERT INTO capture_paths (sha256, path, seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT (sha256, path) DO UPDATE SET seen_at = excluded.seen_at",
                (sha256, path, iso_utc(now)),
            )
            record = self._get(db, sha256)
        assert record is not None
        log.debug("capture_enqueued", sha256=sha256, path=path, created=created, state=record.state)
        return EnqueueResult(record, created)

    def _revive(self, db: sqlite3.Connection, sha256: str, state: str, path: str, meta: str, now: float) -> None:
        has_extraction = db.execute("SELECT 1 FROM extractions WHERE sha256 = ?", (sha256,)).fetchone()
        to = "extracted" if state == "retracted" and has_extraction else "queued"
        # A graph retraction still pending must not run after the facts are projected again.
        db.execute(
            """UPDATE captures SET state = ?, path = ?, metadata = ?, updated_at = ?, attempts = 0,
               interrupted = 0, last_error = NULL, stage = NULL, hint = NULL, next_attempt_at = NULL,
               graph_retraction_pending = 0 WHERE sha256 = ?""",
            (to, path, meta, iso_utc(now), sha256),
        )

    def _crash_failed(self, row: sqlite3.Row) -> bool:
        return bool(row["interrupted"] >= self._max_interrupted)

    def get(self, sha256: str) -> CaptureRecord | None:
        """The capture with this sha256, or None."""
        with self._translate("read"):
            return self._get(self._db(), sha256)

    def _get(self, db: sqlite3.Connection, sha256: str) -> CaptureRecord | None:
        row = db.execute("SELECT * FROM captures WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else capture_from_row(row)

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
        return capture_from_row(rows[0]) if rows else None

    def captures(self, states: Sequence[str] | None = None, *, limit: int | None = None) -> list[CaptureRecord]:
        """Captures in the given states (all when None), oldest first."""
        sql, params = "SELECT * FROM captures", list[Any]()
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            params.extend(states)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [capture_from_row(row) for row in self._read(sql, params)]

    def due_for_projection(self, *, limit: int = 100) -> list[CaptureRecord]:
        """Captures in 'extracted' whose next projection attempt is due, oldest first."""
        rows = self._read(
            """SELECT * FROM captures WHERE state = 'extracted'
               AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY seq LIMIT ?""",
            (self._now(), limit),
        )
        return [capture_from_row(row) for row in rows]

    def retractions_due(self, *, limit: int | None = 100) -> list[CaptureRecord]:
        """Retracted captures whose facts may still be in Neo4j, oldest first (all when limit is None)."""
        rows = self._read(
            "SELECT * FROM captures WHERE graph_retraction_pending = 1 AND state = 'retracted' ORDER BY seq LIMIT ?",
            (-1 if limit is None else limit,),
        )
        return [capture_from_row(row) for row in rows]

    # -- transitions

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

    def mark_projected(self, sha256: str) -> None:
        """extracted -> projected: its facts are committed in Neo4j."""
        self._move(sha256, ("extracted",), "projected")

    def mark_done(self, sha256: str) -> None:
        """extracted|projected -> done: the capture's file has left the inbox (or there is none)."""
        self._move(sha256, ("extracted", "projected"), "done")

    def mark_retracted(self, sha256: str, *, graph: bool = True) -> None:
        """extracted|projected|done -> retracted: its file was deleted or replaced by an edit.

        graph: its facts are still in Neo4j, so a graph retraction is due
        (False when the caller already removed them, or there is no Neo4j).
        """
        self._move(sha256, FACT_STATES, "retracted", graph_retraction_pending=graph)

    def mark_graph_retracted(self, sha256: str) -> None:
        """The graph half of a retraction is done: Neo4j no longer holds its facts."""
        with self._write("mark_graph_retracted") as db:
            db.execute("UPDATE captures SET graph_retraction_pending = 0 WHERE sha256 = ?", (sha256,))
        log.debug("capture_graph_retracted", sha256=sha256)

    def _move(self, sha256: str, states: tuple[str, ...], to: str, *, graph_retraction_pending: bool = False) -> None:
        now = self._now()
        with self._write(f"mark_{to}") as db:
            self._require(db, sha256, states)
            db.execute(
                """UPDATE captures SET state = ?, updated_at = ?, attempts = 0, last_error = NULL,
                   next_attempt_at = NULL, graph_retraction_pending = ? WHERE sha256 = ?""",
                (to, iso_utc(now), int(graph_retraction_pending), sha256),
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


def iso_or_none(epoch: float | None) -> str | None:
    return None if epoch is None else iso_utc(epoch)


def capture_from_row(row: sqlite3.Row) -> CaptureRecord:
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
        next_attempt_at=iso_or_none(row["next_attempt_at"]),
        claimed_by=row["claimed_by"],
        interrupted=row["interrupted"],
        graph_retraction_pending=bool(row["graph_retraction_pending"]),
    )
