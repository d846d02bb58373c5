"""The journal's schema: migrations applied in order, once each, recorded by name
in `_migrations`. Append only: the names and SQL of applied ones never change,
so every journal ever written still opens."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import datetime

from membrane.clock import iso_utc
from membrane.journal.search import create_search_schema

__all__ = ["MIGRATIONS", "migrate"]


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


def _m005_graph_retractions(db: sqlite3.Connection) -> None:
    # 1: retracted in the journal, its facts may still be in Neo4j (project_due retries).
    db.execute("ALTER TABLE captures ADD COLUMN graph_retraction_pending INTEGER NOT NULL DEFAULT 0")
    # Journals from before this column: their graph retractions may never have run (the
    # old in-memory set died with the process). Retracting twice is harmless; missing one is not.
    db.execute("UPDATE captures SET graph_retraction_pending = 1 WHERE state = 'retracted'")
    db.execute("CREATE INDEX captures_graph_retraction ON captures(seq) WHERE graph_retraction_pending = 1")


def _m006_search(db: sqlite3.Connection) -> None:
    # The search index and the triggers that keep it current (journal/search.py).
    create_search_schema(db)


def _m007_captured_at(db: sqlite3.Connection) -> None:
    # The capture's own date, as the note writes it (ISO-8601): it dates the facts it supports.
    db.execute("ALTER TABLE captures ADD COLUMN captured_at TEXT")
    # Captures from before: the date their metadata gives (a JSON capture's captured_at, front
    # matter's captured_at, date or created), else their ingestion time. The rule as it stood
    # when this ran (capture.note_date), kept here: a migration never changes.
    rows = db.execute("SELECT sha256, metadata, ingested_at FROM captures").fetchall()
    for sha256, metadata, ingested_at in rows:
        db.execute(
            "UPDATE captures SET captured_at = ? WHERE sha256 = ?", (_m007_note_date(metadata) or ingested_at, sha256)
        )
    # The search index (m006) holds each capture's date: index every capture again.
    db.execute(
        "INSERT INTO search_dirty (sha256) SELECT sha256 FROM captures WHERE true "
        "ON CONFLICT (sha256) DO UPDATE SET version = version + 1"
    )


def _m007_note_date(metadata: str) -> str | None:
    try:
        values = json.loads(metadata)
    except ValueError:
        return None
    for key in ("captured_at", "date", "created"):
        value = values.get(key) if isinstance(values, dict) else None
        if isinstance(value, str):
            try:
                if datetime.fromisoformat(value.strip()).year >= 1000:
                    return value.strip()
            except ValueError:
                continue
    return None


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _m001_captures,
    _m002_extractions,
    _m003_rejections,
    _m004_models,
    _m005_graph_retractions,
    _m006_search,
    _m007_captured_at,
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
