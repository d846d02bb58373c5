"""Stored extractions: one row per ExtractionResult, with the raw model output
needed to reproduce it, and the reads that join them to their captures.

records.ExtractionResult is the one list of the record's fields: the columns
of `extractions` are its field names (plus id, sha256, created_at), so the
row codec below is derived from it rather than written out again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

from membrane.clock import iso_utc
from membrane.journal.captures import (
    FACT_STATES,
    CaptureRecord,
    CaptureState,
    capture_from_row,
    change_state,
    locked_capture,
)
from membrane.journal.core import Store
from membrane.logs import get_logger
from membrane.records import ExtractionResult
from membrane.schema import UNBOUNDED_RULES, Extraction

__all__ = ["ExtractionStore", "StoredExtraction"]

log = get_logger(__name__)

_COLUMNS = tuple(f.name for f in fields(ExtractionResult))


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# Fields stored as something other than themselves (JSON text, 0/1): to the column and back.
_ENCODE: dict[str, Callable[[Any], Any]] = {
    "extraction": lambda e: _dump(e.model_dump(mode="json")),
    "raw_outputs": lambda v: _dump(list(v)),
    "errors": lambda v: _dump(list(v)),
    "first_attempt_valid": int,
    "chunks": lambda v: json.dumps([list(c) for c in v]),
}
_DECODE: dict[str, Callable[[Any], Any]] = {
    # Validated under the limits of its day: re-reading must not fail because they changed.
    "extraction": lambda text: Extraction.parse(json.loads(text), UNBOUNDED_RULES),
    "raw_outputs": lambda text: tuple(json.loads(text)),
    "errors": lambda text: tuple(json.loads(text)),
    "first_attempt_valid": bool,
    "chunks": lambda text: tuple((int(a), int(b)) for a, b in json.loads(text)),
}


@dataclass(frozen=True)
class StoredExtraction:
    """An extraction as the journal holds it: the result and where it sits."""

    id: int
    sha256: str
    created_at: str
    result: ExtractionResult


class ExtractionStore(Store):
    """extracting -> extracted with its stored result, and the reads of stored results."""

    def record(self, sha256: str, result: ExtractionResult) -> int:
        """Store a validated extraction and move the capture extracting -> extracted; returns its id."""
        now = self._core.now()
        values = [_ENCODE.get(name, _same)(getattr(result, name)) for name in _COLUMNS]
        columns = ", ".join(("sha256", *_COLUMNS, "created_at"))
        marks = ", ".join("?" * (len(_COLUMNS) + 2))
        with self._core.write("record_extraction") as db:
            # A capture no longer extracting (its lease was lost) is refused before anything is stored.
            change_state(
                db,
                locked_capture(db, sha256),
                CaptureState.EXTRACTED,
                expect=(CaptureState.EXTRACTING,),
                extracted_at=iso_utc(now),
                updated_at=iso_utc(now),
                attempts=0,
                interrupted=0,
                last_error=None,
                next_attempt_at=None,
                claimed_by=None,
                lease_until=None,
            )
            # The column names come from ExtractionResult's fields, never from data.
            cursor = db.execute(
                f"INSERT INTO extractions ({columns}) VALUES ({marks})", (sha256, *values, iso_utc(now))
            )
        log.info(
            "capture_extracted",
            sha256=sha256,
            model=result.model,
            backend=result.backend,
            seconds=result.seconds,
            calls=result.calls,
        )
        return int(cursor.lastrowid or 0)

    def latest(self, sha256: str) -> StoredExtraction | None:
        """The newest stored extraction of this capture, or None."""
        rows = self._core.read("SELECT * FROM extractions WHERE sha256 = ? ORDER BY id DESC LIMIT 1", (sha256,))
        return _stored(rows[0]) if rows else None

    def facts(self, states: Sequence[CaptureState] = FACT_STATES) -> Iterator[tuple[CaptureRecord, StoredExtraction]]:
        """Each capture in `states` with its latest extraction, oldest first: for sync and export."""
        placeholders = ",".join("?" * len(states))
        joined = ", ".join(f"e.{name} AS e_{name}" for name in ("id", *_COLUMNS, "created_at"))
        rows = self._core.read(
            f"""SELECT c.*, {joined}
                FROM captures c JOIN extractions e ON e.id = (
                    SELECT MAX(id) FROM extractions WHERE sha256 = c.sha256)
                WHERE c.state IN ({placeholders}) ORDER BY c.seq""",
            tuple(states),
        )
        for row in rows:
            yield capture_from_row(row), _stored(row, prefix="e_", sha256=row["sha256"])

    def recorded_outputs(self) -> Iterator[tuple[str, str]]:
        """(text, raw output) pairs of successful extractions, for the replay backend.

        A single-chunk extraction gives (capture text, its last raw output, the
        valid one). A chunked one gives (chunk text, output) per chunk when each
        chunk took one call; chunked ones with repairs are skipped, since their
        outputs cannot be matched to chunks.
        """
        rows = self._core.read(
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


def _same(value: Any) -> Any:
    return value


def _stored(row: sqlite3.Row, *, prefix: str = "", sha256: str | None = None) -> StoredExtraction:
    values = {name: _DECODE.get(name, _same)(row[prefix + name]) for name in _COLUMNS}
    return StoredExtraction(
        id=row[prefix + "id"],
        sha256=sha256 or row[prefix + "sha256"],
        created_at=row[prefix + "created_at"],
        result=ExtractionResult(**values),
    )
