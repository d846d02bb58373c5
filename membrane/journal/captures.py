"""Captures and their state machine (claims are in claims.py).

Captures are keyed by the sha256 of their bytes::

    queued --claim--> extracting --record (extractions.py)--> extracted
      ^                  |  \\--release (retryable; attempts+1, next_attempt_at)--> queued
      |                  |
      |   extracted --mark_projected--> projected --mark_done--> done
      |   extracted --mark_done (journal-only mode, no Neo4j)--> done
      |   extracted|projected|done --mark_retracted--> retracted
      |   projected|done --rekey (a vault's note renamed)--> extracted
      |   any state but done/retracted --fail--> failed (stage, reason, hint)
      \\-- requeue_failed / enqueue of the same bytes again <-- failed|retracted

`CaptureState` names the states, `TRANSITIONS` is the machine, and every state
change in the journal goes through `change_state`, which refuses a move the
table does not hold (or one from a state the caller no longer holds the
capture in) with StaleClaim, naming both states. The stored values are the
states' strings.

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
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from membrane.clock import iso_utc
from membrane.errors import StaleClaim
from membrane.journal.core import Store
from membrane.logs import get_logger

__all__ = [
    "CAPTURE_STATES",
    "FACT_STATES",
    "PENDING_STATES",
    "TRANSITIONS",
    "CaptureRecord",
    "CaptureState",
    "CaptureStore",
    "EnqueueResult",
    "sources",
]

log = get_logger(__name__)


class CaptureState(StrEnum):
    """Where a capture stands; the value is what the journal stores."""

    QUEUED = "queued"
    EXTRACTING = "extracting"
    EXTRACTED = "extracted"
    PROJECTED = "projected"
    DONE = "done"
    FAILED = "failed"
    RETRACTED = "retracted"


_S = CaptureState
# The state machine: from each state, the states it may move to. Nothing else changes a state.
TRANSITIONS: Mapping[CaptureState, frozenset[CaptureState]] = MappingProxyType(
    {
        _S.QUEUED: frozenset({_S.EXTRACTING, _S.FAILED}),
        _S.EXTRACTING: frozenset({_S.QUEUED, _S.EXTRACTED, _S.FAILED}),
        _S.EXTRACTED: frozenset({_S.PROJECTED, _S.DONE, _S.RETRACTED, _S.FAILED}),
        # -> extracted: a vault's note renamed, projected again under its new path (rekey).
        _S.PROJECTED: frozenset({_S.DONE, _S.RETRACTED, _S.FAILED, _S.EXTRACTED}),
        _S.DONE: frozenset({_S.RETRACTED, _S.EXTRACTED}),
        # A person moved the file back, a promotion requeued it, or the same bytes arrived again.
        _S.FAILED: frozenset({_S.QUEUED, _S.EXTRACTED}),
        _S.RETRACTED: frozenset({_S.QUEUED, _S.EXTRACTED}),
    }
)

CAPTURE_STATES: tuple[CaptureState, ...] = tuple(CaptureState)
# States whose extraction is part of the graph (exported, synced, retracted on an edit).
FACT_STATES: tuple[CaptureState, ...] = (_S.EXTRACTED, _S.PROJECTED, _S.DONE)
# States with work still to do before the capture settles: zero of them means idle.
PENDING_STATES: tuple[CaptureState, ...] = (_S.QUEUED, _S.EXTRACTING, _S.EXTRACTED)


def sources(to: CaptureState) -> tuple[CaptureState, ...]:
    """The states the table lets move to `to`."""
    return tuple(state for state in CaptureState if to in TRANSITIONS[state])


@dataclass(frozen=True)
class CaptureRecord:
    """One capture as the journal holds it."""

    sha256: str
    path: str  # the path it first (or last, for an edit) arrived at
    text: str
    metadata: Mapping[str, Any]
    state: CaptureState
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
    # The capture's own date, ISO-8601 as the note writes it; fixed at first enqueue.
    captured_at: str = ""


@dataclass(frozen=True)
class EnqueueResult:
    record: CaptureRecord
    created: bool  # False: the same bytes were already in the journal


class CaptureStore(Store):
    """Enqueue, look-ups and the state transitions after the claim."""

    # -- enqueue and look-up

    def enqueue(
        self,
        sha256: str,
        path: str,
        text: str,
        metadata: Mapping[str, Any] | None = None,
        *,
        captured_at: str | None = None,
    ) -> EnqueueResult:
        """Record a capture read from `path`; the same bytes again only add the path.

        `captured_at` is the capture's own date (ISO-8601 as the note writes
        it; None: now). Like ingested_at it is fixed at first enqueue, so the
        same bytes arriving again (with another mtime) date their facts the same.

        A known capture keeps its state (done stays done: not extracted again),
        except: failed goes back to queued (the person moved it back), unless
        it failed because it kept killing the process (its file may simply
        still be in the inbox after the last crash: queuing it again would
        crash-loop); and retracted goes back to extracted when an extraction
        is stored (the facts are re-projected without calling the model).
        """
        now = self._core.now()
        meta = json.dumps(dict(metadata or {}), ensure_ascii=False, sort_keys=True, default=str)
        with self._core.write("enqueue") as db:
            known = _get(db, sha256)
            created = known is None
            if known is None:
                db.execute(
                    """INSERT INTO captures (sha256, path, text, metadata, state, ingested_at, updated_at, captured_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                    (
                        sha256,
                        path,
                        text,
                        meta,
                        CaptureState.QUEUED,
                        iso_utc(now),
                        iso_utc(now),
                        captured_at or iso_utc(now),
                    ),
                )
            elif known.state == CaptureState.RETRACTED or (
                known.state == CaptureState.FAILED and not self._crash_failed(known)
            ):
                self._revive(db, known, path, meta, now)
            db.execute(
                "INSERT INTO capture_paths (sha256, path, seen_at) VALUES (?, ?, ?) "
                "ON CONFLICT (sha256, path) DO UPDATE SET seen_at = excluded.seen_at",
                (sha256, path, iso_utc(now)),
            )
            record = _get(db, sha256)
        assert record is not None
        log.debug("capture_enqueued", sha256=sha256, path=path, created=created, state=record.state)
        return EnqueueResult(record, created)

    def _revive(self, db: sqlite3.Connection, capture: CaptureRecord, path: str, meta: str, now: float) -> None:
        has_extraction = db.execute("SELECT 1 FROM extractions WHERE sha256 = ?", (capture.sha256,)).fetchone()
        back_to_facts = capture.state == CaptureState.RETRACTED and has_extraction
        to = CaptureState.EXTRACTED if back_to_facts else CaptureState.QUEUED
        # A graph retraction still pending must not run after the facts are projected again.
        change_state(
            db,
            capture,
            to,
            path=path,
            metadata=meta,
            updated_at=iso_utc(now),
            attempts=0,
            interrupted=0,
            last_error=None,
            stage=None,
            hint=None,
            next_attempt_at=None,
            graph_retraction_pending=0,
        )

    def _crash_failed(self, capture: CaptureRecord) -> bool:
        return capture.interrupted >= self._core.max_interrupted

    def get(self, sha256: str) -> CaptureRecord | None:
        """The capture with this sha256, or None."""
        with self._core.translate("read"):
            return _get(self._core.db(), sha256)

    def paths(self, sha256: str) -> list[str]:
        """Every path this capture's bytes arrived at, oldest first."""
        rows = self._core.read("SELECT path FROM capture_paths WHERE sha256 = ? ORDER BY seen_at, path", (sha256,))
        return [row["path"] for row in rows]

    def last_for_path(self, path: str, *, exclude: str | None = None) -> CaptureRecord | None:
        """The most recent capture seen at `path` whose facts are in the graph (extracted,
        projected or done), other than `exclude`: the old version to retract on an edit."""
        placeholders = ",".join("?" * len(FACT_STATES))
        rows = self._core.read(
            f"""SELECT c.* FROM capture_paths p JOIN captures c ON c.sha256 = p.sha256
                WHERE p.path = ? AND c.state IN ({placeholders}) AND c.sha256 IS NOT ?
                ORDER BY p.seen_at DESC, c.seq DESC LIMIT 1""",
            (path, *FACT_STATES, exclude),
        )
        return capture_from_row(rows[0]) if rows else None

    def in_states(
        self, states: Sequence[CaptureState] | None = None, *, limit: int | None = None
    ) -> list[CaptureRecord]:
        """Captures in the given states (all when None), oldest first."""
        sql, params = "SELECT * FROM captures", list[Any]()
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            params.extend(states)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        return [capture_from_row(row) for row in self._core.read(sql, params)]

    def due_for_projection(self, *, limit: int = 100) -> list[CaptureRecord]:
        """Captures in 'extracted' whose next projection attempt is due, oldest first."""
        rows = self._core.read(
            """SELECT * FROM captures WHERE state = ?
               AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY seq LIMIT ?""",
            (CaptureState.EXTRACTED, self._core.now(), limit),
        )
        return [capture_from_row(row) for row in rows]

    def retractions_due(self, *, limit: int | None = 100) -> list[CaptureRecord]:
        """Retracted captures whose facts may still be in Neo4j, oldest first (all when limit is None)."""
        rows = self._core.read(
            "SELECT * FROM captures WHERE graph_retraction_pending = 1 AND state = ? ORDER BY seq LIMIT ?",
            (CaptureState.RETRACTED, -1 if limit is None else limit),
        )
        return [capture_from_row(row) for row in rows]

    # -- transitions

    def defer(self, sha256: str, *, error: str, delay_s: float) -> CaptureRecord:
        """A retryable error in a later stage (projection): same state, due again after delay_s."""
        seen = self.get(sha256)
        if seen is None:
            raise StaleClaim(f"capture {sha256} is not in the journal")
        now = self._core.now()
        with self._core.write("retry") as db:
            capture = held_capture(db, sha256, seen.state)
            _update(db, sha256, **retry_columns(capture, now, error=error, delay_s=delay_s))
            record = _get(db, sha256)
        assert record is not None
        log_retry(record, delay_s=delay_s, error=error)
        return record

    def mark_projected(self, sha256: str) -> None:
        """extracted -> projected: its facts are committed in Neo4j."""
        self._settle(sha256, CaptureState.PROJECTED)

    def mark_done(self, sha256: str) -> None:
        """extracted|projected -> done: the capture's file has left the inbox (or there is none)."""
        self._settle(sha256, CaptureState.DONE)

    def mark_retracted(self, sha256: str, *, graph: bool = True) -> None:
        """extracted|projected|done -> retracted: its file was deleted or replaced by an edit.

        graph: its facts are still in Neo4j, so a graph retraction is due
        (False when the caller already removed them, or there is no Neo4j).
        """
        self._settle(sha256, CaptureState.RETRACTED, graph_retraction_pending=graph)

    def rekey(self, sha256: str, path: str) -> CaptureRecord:
        """A capture's file was renamed (a vault's note): it goes by `path` now, and
        projected|done -> extracted, so the graph is written again under the new path
        (an extracted one keeps its state: its projection is still to come)."""
        now = self._core.now()
        columns: dict[str, object] = {
            "path": path,
            "updated_at": iso_utc(now),
            "attempts": 0,
            "last_error": None,
            "next_attempt_at": None,
        }
        with self._core.write("rekey") as db:
            capture = locked_capture(db, sha256)
            if capture.state == CaptureState.EXTRACTED:
                _update(db, sha256, **columns)
            else:
                change_state(
                    db, capture, CaptureState.EXTRACTED, expect=(CaptureState.PROJECTED, CaptureState.DONE), **columns
                )
            record = _get(db, sha256)
        assert record is not None
        log.info("capture_rekeyed", sha256=sha256, path=path)
        return record

    def mark_graph_retracted(self, sha256: str) -> None:
        """The graph half of a retraction is done: Neo4j no longer holds its facts."""
        with self._core.write("mark_graph_retracted") as db:
            _update(db, sha256, graph_retraction_pending=0)
        log.debug("capture_graph_retracted", sha256=sha256)

    def _settle(self, sha256: str, to: CaptureState, *, graph_retraction_pending: bool = False) -> None:
        """A move after the extraction, from any state the table allows: the error fields clear."""
        now = self._core.now()
        with self._core.write(f"mark_{to}") as db:
            change_state(
                db,
                locked_capture(db, sha256),
                to,
                updated_at=iso_utc(now),
                attempts=0,
                last_error=None,
                next_attempt_at=None,
                graph_retraction_pending=int(graph_retraction_pending),
            )
        log.debug("capture_state", sha256=sha256, state=to)

    def fail(self, sha256: str, *, stage: str, reason: str, hint: str = "") -> None:
        """Any live state -> failed (permanent): the file goes to failed/ with this reason and hint."""
        with self._core.write("fail") as db:
            fail_capture(db, locked_capture(db, sha256), self._core.now(), stage=stage, reason=reason, hint=hint)
        log.warning("capture_failed", sha256=sha256, stage=stage, reason=reason)

    def requeue_failed(self, stage: str = "extract") -> int:
        """Failed captures of `stage` get another chance (after a promotion); returns how many.

        Stage "extract" (or any stage before it) goes back to queued; stage
        "project" goes back to extracted, since its extraction is stored.
        """
        now = self._core.now()
        to = CaptureState.EXTRACTED if stage == "project" else CaptureState.QUEUED
        with self._core.write("requeue_failed") as db:
            rows = db.execute(
                "SELECT * FROM captures WHERE state = ? AND stage = ? ORDER BY seq", (CaptureState.FAILED, stage)
            ).fetchall()
            for row in rows:
                change_state(
                    db,
                    capture_from_row(row),
                    to,
                    expect=(CaptureState.FAILED,),
                    stage=None,
                    last_error=None,
                    hint=None,
                    attempts=0,
                    interrupted=0,
                    next_attempt_at=None,
                    updated_at=iso_utc(now),
                )
        count = len(rows)
        log.info("captures_requeued", stage=stage, count=count)
        return count


# -- the one way a state changes, for every store (claims and extractions move captures too)


def locked_capture(db: sqlite3.Connection, sha256: str) -> CaptureRecord:
    """The capture as it is inside the caller's write transaction; StaleClaim if there is none."""
    capture = _get(db, sha256)
    if capture is None:
        raise StaleClaim(f"capture {sha256} is not in the journal")
    return capture


def held_capture(db: sqlite3.Connection, sha256: str, state: CaptureState) -> CaptureRecord:
    """The capture, read in this transaction, still in `state` (a renewal or a retry that
    keeps the state); StaleClaim when it moved on."""
    capture = locked_capture(db, sha256)
    if capture.state != state:
        raise StaleClaim(f"capture {sha256} is {capture.state}, expected {state}")
    return capture


def change_state(
    db: sqlite3.Connection,
    capture: CaptureRecord,
    to: CaptureState,
    *,
    expect: Collection[CaptureState] | None = None,
    **columns: object,
) -> None:
    """Move `capture` (read in this transaction) to `to`, setting `columns` in the same UPDATE.

    `expect` is the states the caller holds the capture in (default: every state
    the table lets move to `to`). A capture elsewhere, or a move the table does
    not hold, is refused with StaleClaim naming both states.
    """
    expected = tuple(expect) if expect is not None else sources(to)
    if capture.state not in expected or to not in TRANSITIONS[capture.state]:
        raise StaleClaim(
            f"capture {capture.sha256} is {capture.state}, expected {' or '.join(expected)}: "
            f"cannot move {capture.state} -> {to}"
        )
    _update(db, capture.sha256, state=to, **columns)


def fail_capture(
    db: sqlite3.Connection,
    capture: CaptureRecord,
    now: float,
    *,
    stage: str,
    reason: str,
    hint: str,
    expect: Collection[CaptureState] | None = None,
    **columns: object,
) -> None:
    """-> failed (permanent), with the stage, reason and hint that go into failed/; the claim and any retry end."""
    change_state(
        db,
        capture,
        CaptureState.FAILED,
        expect=expect,
        stage=stage,
        last_error=reason,
        hint=hint,
        claimed_by=None,
        lease_until=None,
        next_attempt_at=None,
        updated_at=iso_utc(now),
        **columns,
    )


def retry_columns(
    capture: CaptureRecord, now: float, *, error: str, delay_s: float, crashed: bool = False
) -> dict[str, object]:
    """A retryable error: the attempt counted, the error kept, due again after delay_s; the claim ends."""
    return {
        "attempts": capture.attempts + 1,
        "interrupted": capture.interrupted + int(crashed),
        "last_error": error,
        "next_attempt_at": now + max(0.0, delay_s),
        "claimed_by": None,
        "lease_until": None,
        "updated_at": iso_utc(now),
    }


def log_retry(record: CaptureRecord, *, delay_s: float, error: str) -> None:
    log.info("capture_retry_scheduled", sha256=record.sha256, attempts=record.attempts, delay_s=delay_s, error=error)


def _update(db: sqlite3.Connection, sha256: str, **columns: object) -> None:
    # The column names come from the code above, never from data.
    assignments = ", ".join(f"{name} = ?" for name in columns)
    db.execute(f"UPDATE captures SET {assignments} WHERE sha256 = ?", (*columns.values(), sha256))


def _get(db: sqlite3.Connection, sha256: str) -> CaptureRecord | None:
    row = db.execute("SELECT * FROM captures WHERE sha256 = ?", (sha256,)).fetchone()
    return None if row is None else capture_from_row(row)


def iso_or_none(epoch: float | None) -> str | None:
    return None if epoch is None else iso_utc(epoch)


def capture_from_row(row: sqlite3.Row) -> CaptureRecord:
    return CaptureRecord(
        sha256=row["sha256"],
        path=row["path"],
        text=row["text"],
        metadata=json.loads(row["metadata"]),
        state=CaptureState(row["state"]),
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
        captured_at=row["captured_at"] or row["ingested_at"],
    )
