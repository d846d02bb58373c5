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
from membrane.journal.captures import CaptureRecord, CaptureStore
from membrane.logs import get_logger

__all__ = ["DEFAULT_LEASE_S", "ClaimStore"]

log = get_logger(__name__)

DEFAULT_LEASE_S = 900.0


class ClaimStore(CaptureStore):
    """queued -> extracting and back: claim, renew, release, recovery of dead claims."""

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
