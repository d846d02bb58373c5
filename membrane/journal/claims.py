"""Claims: which worker extracts a capture, for how long, and what happens when it dies.

Claims carry a lease and the claimant ("host:pid:process-token:worker"). At
open, claims of dead processes on this host go back to queued at once (crash
recovery); other expired leases are reclaimable by `claim`. A capture whose
claim was lost this way `max_interrupted` times fails (stage "extract"): it is
likely what kills the process, and must not crash-loop the daemon.
"""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
import uuid

from membrane.clock import iso_utc
from membrane.journal.captures import (
    CaptureRecord,
    CaptureState,
    change_state,
    fail_capture,
    held_capture,
    locked_capture,
    log_retry,
    retry_columns,
)
from membrane.journal.core import Store
from membrane.logs import get_logger

__all__ = ["DEFAULT_LEASE_S", "ClaimStore"]

log = get_logger(__name__)

DEFAULT_LEASE_S = 900.0


class ClaimStore(Store):
    """queued -> extracting and back: claim, renew, release, recovery of dead claims."""

    def claim(self, worker: str = "worker", *, lease_s: float = DEFAULT_LEASE_S) -> CaptureRecord | None:
        """Take the oldest due queued capture for extraction (-> extracting), or None.

        Also takes an 'extracting' capture whose lease ran out (its claimant
        hung or died elsewhere); that counts as an interruption.
        """
        now = self._core.now()
        claimant = _claimant(worker)
        with self._core.write("claim") as db:
            self._expire_leases(db, now)
            row = db.execute(
                """SELECT sha256 FROM captures
                   WHERE state = ? AND (next_attempt_at IS NULL OR next_attempt_at <= ?)
                   ORDER BY seq LIMIT 1""",
                (CaptureState.QUEUED, now),
            ).fetchone()
            if row is None:
                return None
            sha256 = row["sha256"]
            change_state(
                db,
                locked_capture(db, sha256),
                CaptureState.EXTRACTING,
                claimed_by=claimant,
                lease_until=now + lease_s,
                updated_at=iso_utc(now),
            )
            record = locked_capture(db, sha256)
        log.debug("capture_claimed", sha256=sha256, worker=claimant)
        return record

    def renew(self, sha256: str, *, lease_s: float = DEFAULT_LEASE_S) -> None:
        """Extend the lease of a capture this process is extracting (long model calls)."""
        now = self._core.now()
        with self._core.write("renew") as db:
            held_capture(db, sha256, CaptureState.EXTRACTING)
            db.execute("UPDATE captures SET lease_until = ? WHERE sha256 = ?", (now + lease_s, sha256))

    def release(self, sha256: str, *, error: str, delay_s: float, crashed: bool = False) -> CaptureRecord:
        """A retryable error while extracting: back to queued, due again after delay_s.

        crashed: the model's process died on it (ModelCrashed); counted with the interruptions.
        """
        now = self._core.now()
        with self._core.write("retry") as db:
            capture = locked_capture(db, sha256)
            change_state(
                db,
                capture,
                CaptureState.QUEUED,
                expect=(CaptureState.EXTRACTING,),
                **retry_columns(capture, now, error=error, delay_s=delay_s, crashed=crashed),
            )
            record = locked_capture(db, sha256)
        log_retry(record, delay_s=delay_s, error=error)
        return record

    def recover(self) -> int:
        """Claims held by dead processes on this host go back to queued; returns how many.

        Run at open. A capture interrupted `max_interrupted` times fails instead.
        """
        now = self._core.now()
        host = socket.gethostname()
        with self._core.write("recover_claims") as db:
            rows = db.execute(
                "SELECT sha256, claimed_by FROM captures WHERE state = ?", (CaptureState.EXTRACTING,)
            ).fetchall()
            dead = [r["sha256"] for r in rows if _dead_claimant(r["claimed_by"], host)]
            for sha256 in dead:
                self._interrupt(db, sha256, now)
        if dead:
            log.warning("claims_recovered", count=len(dead))
        return len(dead)

    def _expire_leases(self, db: sqlite3.Connection, now: float) -> None:
        rows = db.execute(
            "SELECT sha256 FROM captures WHERE state = ? AND lease_until < ?", (CaptureState.EXTRACTING, now)
        ).fetchall()
        for row in rows:
            self._interrupt(db, row["sha256"], now)

    def _interrupt(self, db: sqlite3.Connection, sha256: str, now: float) -> None:
        capture = locked_capture(db, sha256)
        interrupted = capture.interrupted + 1
        if interrupted >= self._core.max_interrupted:
            fail_capture(
                db,
                capture,
                now,
                expect=(CaptureState.EXTRACTING,),
                stage="extract",
                interrupted=interrupted,
                reason=f"extraction was interrupted {interrupted} times (the process died or hung)",
                hint="This capture may crash or hang the model; split it or try another model, "
                "then move it back to the inbox.",
            )
            return
        change_state(
            db,
            capture,
            CaptureState.QUEUED,
            expect=(CaptureState.EXTRACTING,),
            interrupted=interrupted,
            claimed_by=None,
            lease_until=None,
            updated_at=iso_utc(now),
        )


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


def _dead_claimant(claimed_by: str | None, host: str) -> bool:
    if not claimed_by:
        return True
    claim_host, pid_text, token, _worker = (claimed_by.split(":", 3) + ["", "", ""])[:4]
    if claim_host != host or not pid_text.isdigit():
        return False  # another machine's claim: only its lease can expire it
    if int(pid_text) == os.getpid():
        return token != _process_token()
    return not _process_alive(int(pid_text))
