"""The champion history (promotions and rollbacks) and the stored bench runs.

The champion is not stored as a value: it is the top of the stack that
replaying the promotions gives, so every change stays on record. Without a
promotion the configured [model] is champion; membrane.champion combines the
two into the effective champion.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from membrane.clock import iso_utc
from membrane.errors import MembraneError
from membrane.journal.core import Store
from membrane.logs import get_logger
from membrane.schema import ModelRef

__all__ = ["ModelStore"]

log = get_logger(__name__)


class ModelStore(Store):
    """Champion history and bench runs."""

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

    def last_promotion(self) -> ModelRef | None:
        """The model the promotions (less rollbacks) left champion, or None before any promotion."""
        with self._core.translate("last_promotion"):
            stack = self._champions(self._core.db())
        return ModelRef.parse(stack[-1]) if stack else None

    def set_active_model(
        self, ref: ModelRef, *, reason: str, evidence: Mapping[str, Any], replacing: ModelRef | None = None
    ) -> None:
        """Make `ref` the champion, recording a promotion (previous, new, reason, evidence, time).

        `replacing` names the champion in effect when none was promoted yet (the
        configured model), so that a rollback can return to it.
        """
        with self._core.write("set_active_model") as db:
            stack = self._champions(db)
            previous = stack[-1] if stack else (str(replacing) if replacing else None)
            self._insert_promotion(db, "promote", previous, str(ref), reason, evidence)
        log.info("model_promoted", previous=previous, new=str(ref), reason=reason)

    def rollback_active_model(self, *, reason: str) -> ModelRef:
        """Restore the previous champion (recorded as a promotion of kind 'rollback')."""
        with self._core.write("rollback_active_model") as db:
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
            (iso_utc(self._core.now()), kind, previous, new, reason, json.dumps(dict(evidence), default=str)),
        )

    def promotions(self, limit: int = 20) -> list[dict[str, Any]]:
        """Newest first: id, created_at, kind ("promote" or "rollback"), previous, new, reason, evidence."""
        rows = self._core.read("SELECT * FROM promotions ORDER BY id DESC LIMIT ?", (limit,))
        return [{**dict(row), "evidence": json.loads(row["evidence"])} for row in rows]

    def record_bench_run(self, report: Mapping[str, Any]) -> int:
        """Store a bench report (JSON data); returns its id."""
        with self._core.write("record_bench_run") as db:
            cursor = db.execute(
                "INSERT INTO bench_runs (created_at, report) VALUES (?, ?)",
                (iso_utc(self._core.now()), json.dumps(dict(report), default=str)),
            )
        return int(cursor.lastrowid or 0)

    def bench_runs(self, limit: int = 10) -> list[dict[str, Any]]:
        """Newest first: id, created_at, report."""
        rows = self._core.read("SELECT * FROM bench_runs ORDER BY id DESC LIMIT ?", (limit,))
        return [{"id": row["id"], "created_at": row["created_at"], "report": json.loads(row["report"])} for row in rows]
