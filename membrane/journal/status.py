"""Rejected files (never captures) and the read-only queries behind `membrane status`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from membrane.clock import iso_utc, parse_iso_utc
from membrane.journal.captures import CAPTURE_STATES, PENDING_STATES, CaptureState, iso_or_none
from membrane.journal.core import Store

__all__ = ["ProjectionLag", "StatusStore"]


@dataclass(frozen=True)
class ProjectionLag:
    """Captures extracted but not yet projected into Neo4j."""

    count: int
    oldest_extracted_at: str | None
    oldest_age_s: float | None


class StatusStore(Store):
    """Rejections, counts per state, recent errors, the projection lag."""

    def record_rejection(self, path: str, *, reason: str, hint: str = "", stage: str = "read") -> None:
        """Remember a file refused before it became a capture (for `membrane status`)."""
        with self._core.write("record_rejection") as db:
            db.execute(
                "INSERT INTO rejections (path, stage, reason, hint, created_at) VALUES (?, ?, ?, ?, ?)",
                (path, stage, reason, hint, iso_utc(self._core.now())),
            )

    def counts(self) -> dict[str, int]:
        """Captures per state (keyed by CaptureState), every state present (zeros included)."""
        counts: dict[str, int] = dict.fromkeys(CAPTURE_STATES, 0)
        for row in self._core.read("SELECT state, COUNT(*) AS n FROM captures GROUP BY state"):
            counts[CaptureState(row["state"])] = row["n"]
        return counts

    def pending(self) -> int:
        """Captures still to be worked on (queued, extracting, extracted): zero means idle."""
        placeholders = ",".join("?" * len(PENDING_STATES))
        rows = self._core.read(f"SELECT COUNT(*) AS n FROM captures WHERE state IN ({placeholders})", PENDING_STATES)
        return int(rows[0]["n"])

    def recent_errors(self, limit: int = 10) -> list[dict[str, Any]]:
        """Newest first: failed captures, captures waiting to retry, and rejected files."""
        rows = self._core.read(
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
            item["next_attempt_at"] = iso_or_none(item["next_attempt_at"])
            errors.append(item)
        return errors

    def projection_lag(self) -> ProjectionLag:
        """How many captures are extracted but not projected, and the age of the oldest."""
        row = self._core.read(
            "SELECT COUNT(*) AS n, MIN(extracted_at) AS oldest FROM captures WHERE state = ?", (CaptureState.EXTRACTED,)
        )[0]
        oldest: str | None = row["oldest"]
        age = None if oldest is None else max(0.0, self._core.now() - parse_iso_utc(oldest))
        return ProjectionLag(int(row["n"]), oldest, age)
