"""The journal's search index: the graph `membrane search` reads when there is
no Neo4j (the embedded default), kept in SQLite FTS5 tables beside the captures.

It holds, for every capture with current facts, its title, date and text (an
FTS5 table), the entities it names and the relationships it states; each
entity's display name and aliases (another FTS5 table) are merged from them as
merge.merge_facts merges them: the name of the first capture in (ingested_at,
sha256) order, the sorted union of the surface forms.

Keeping it current takes no change to the writers: triggers (migration
m006_search) mark a capture dirty whenever it is enqueued, changes state or
path, or gets a new extraction; the reader (membrane/search.py) resolves the
dirty captures and hands them to `apply`, which replaces their rows and
clears each mark only if no newer change came in meanwhile, and counts its
changes (`generation`), so a reader holding a graph built from the journal
knows when to build it again. An existing journal starts with every capture
dirty.

Matching uses FTS5's unicode61 tokenizer with diacritics kept and marks,
format characters and underscores inside words, as Neo4j's standard analyzer
keeps them; `fts_query` turns the caller's words into a MATCH expression
(each a quoted phrase, a prefix for names, all required), so no input is ever
FTS5 syntax. Ordering is the one both stores share: entities by exact key
first, then shorter keys, then key; captures newest first, then sha256.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from membrane.journal.core import Store

__all__ = [
    "IndexedCapture",
    "IndexedMention",
    "SearchChange",
    "SearchStore",
    "create_search_schema",
    "fts_query",
]

# Letters, digits, marks, format characters and underscores make words, as in Lucene's standard tokenizer.
_TOKENIZER = "unicode61 remove_diacritics 0 categories ''L* N* Co M* Cf Pc''"


def create_search_schema(db: sqlite3.Connection) -> None:
    """The index's tables and the triggers that mark captures dirty (migration m006_search)."""
    db.execute("CREATE TABLE search_dirty (sha256 TEXT PRIMARY KEY, version INTEGER NOT NULL DEFAULT 1)")
    mark = (
        "INSERT INTO search_dirty (sha256) VALUES (new.sha256) "
        "ON CONFLICT (sha256) DO UPDATE SET version = version + 1;"
    )
    db.execute(f"CREATE TRIGGER search_capture_added AFTER INSERT ON captures BEGIN {mark} END")
    db.execute(
        "CREATE TRIGGER search_capture_changed AFTER UPDATE OF state, path ON captures "
        f"WHEN old.state IS NOT new.state OR old.path IS NOT new.path BEGIN {mark} END"
    )
    db.execute(f"CREATE TRIGGER search_extraction_added AFTER INSERT ON extractions BEGIN {mark} END")
    db.execute("INSERT INTO search_dirty (sha256) SELECT sha256 FROM captures")
    # Counts the index's changes, so a reader can tell that what it built from the journal is still current.
    db.execute("CREATE TABLE search_generation (id INTEGER PRIMARY KEY CHECK (id = 1), generation INTEGER NOT NULL)")
    db.execute("INSERT INTO search_generation (id, generation) VALUES (1, 0)")
    db.execute(
        """CREATE TABLE search_captures (
            id INTEGER PRIMARY KEY,
            sha256 TEXT NOT NULL UNIQUE,
            path TEXT NOT NULL,
            title TEXT,
            captured_at TEXT,
            ingested_at TEXT NOT NULL,
            model TEXT NOT NULL
        )"""
    )
    db.execute("CREATE INDEX search_captures_newest ON search_captures(ingested_at DESC, sha256)")
    db.execute(f"CREATE VIRTUAL TABLE search_capture_text USING fts5(title, text, tokenize = '{_TOKENIZER}')")
    db.execute(
        """CREATE TABLE search_mentions (
            key TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            name TEXT NOT NULL,
            aliases TEXT NOT NULL,
            PRIMARY KEY (key, sha256)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX search_mentions_capture ON search_mentions(sha256)")
    db.execute(
        """CREATE TABLE search_facts (
            source_key TEXT NOT NULL,
            type TEXT NOT NULL,
            target_key TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            PRIMARY KEY (source_key, type, target_key, sha256)
        ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX search_facts_target ON search_facts(target_key)")
    db.execute("CREATE INDEX search_facts_capture ON search_facts(sha256)")
    db.execute(
        """CREATE TABLE search_entities (
            id INTEGER PRIMARY KEY,
            key TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            aliases TEXT NOT NULL
        )"""
    )
    db.execute(f"CREATE VIRTUAL TABLE search_entity_names USING fts5(names, tokenize = '{_TOKENIZER}')")


def fts_query(terms: Sequence[str], *, prefix: bool = True) -> str:
    """An FTS5 MATCH expression requiring every term, as a word's start (`*`) or a whole
    word: each term a quoted string (quotes doubled), so no character of it is syntax."""
    suffix = "*" if prefix else ""
    return " AND ".join('"' + term.replace('"', '""') + '"' + suffix for term in terms)


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class IndexedMention:
    """An entity as one capture names it."""

    key: str
    name: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class IndexedCapture:
    """One capture as the index holds it: what it is, its text, what it names and states."""

    sha256: str
    path: str
    title: str | None
    captured_at: str | None
    ingested_at: str
    model: str
    text: str
    mentions: tuple[IndexedMention, ...]
    facts: tuple[tuple[str, str, str], ...]  # (source key, type, target key)


@dataclass(frozen=True)
class SearchChange:
    """A dirty capture's new rows (None: it has no current facts) and the mark it clears."""

    sha256: str
    version: int
    capture: IndexedCapture | None


Row = dict[str, Any]


def _row(row: sqlite3.Row) -> Row:
    return dict(zip(row.keys(), row, strict=True))


# ---------------------------------------------------------------- the store


class SearchStore(Store):
    """The index over one journal (`journal.search`)."""

    # -- keeping it current

    def dirty(self, limit: int = 500) -> list[tuple[str, int]]:
        """Captures changed since they were last indexed, as (sha256, version)."""
        rows = self._core.read("SELECT sha256, version FROM search_dirty ORDER BY sha256 LIMIT ?", (limit,))
        return [(row["sha256"], row["version"]) for row in rows]

    def apply(self, changes: Sequence[SearchChange]) -> None:
        """Replace the changed captures' rows and re-merge their entities, in one transaction."""
        with self._core.write("search_index") as db:
            keys: set[str] = set()
            for change in changes:
                keys |= self._remove(db, change.sha256)
                if change.capture is not None:
                    keys |= self._insert(db, change.capture)
                db.execute("DELETE FROM search_dirty WHERE sha256 = ? AND version = ?", (change.sha256, change.version))
            for key in sorted(keys):
                self._merge_entity(db, key)
            if changes:
                db.execute("UPDATE search_generation SET generation = generation + 1 WHERE id = 1")

    @staticmethod
    def _remove(db: sqlite3.Connection, sha256: str) -> set[str]:
        row = db.execute("SELECT id FROM search_captures WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            return set()
        db.execute("DELETE FROM search_capture_text WHERE rowid = ?", (row["id"],))
        db.execute("DELETE FROM search_captures WHERE id = ?", (row["id"],))
        keys = {r["key"] for r in db.execute("SELECT key FROM search_mentions WHERE sha256 = ?", (sha256,))}
        db.execute("DELETE FROM search_mentions WHERE sha256 = ?", (sha256,))
        db.execute("DELETE FROM search_facts WHERE sha256 = ?", (sha256,))
        return keys

    @staticmethod
    def _insert(db: sqlite3.Connection, c: IndexedCapture) -> set[str]:
        cursor = db.execute(
            "INSERT INTO search_captures (sha256, path, title, captured_at, ingested_at, model)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (c.sha256, c.path, c.title, c.captured_at, c.ingested_at, c.model),
        )
        db.execute(
            "INSERT INTO search_capture_text (rowid, title, text) VALUES (?, ?, ?)",
            (cursor.lastrowid, c.title or "", c.text),
        )
        db.executemany(
            "INSERT INTO search_mentions (key, sha256, name, aliases) VALUES (?, ?, ?, ?)",
            [(m.key, c.sha256, m.name, json.dumps(list(m.aliases), ensure_ascii=False)) for m in c.mentions],
        )
        db.executemany(
            "INSERT OR IGNORE INTO search_facts (source_key, type, target_key, sha256) VALUES (?, ?, ?, ?)",
            [(*fact, c.sha256) for fact in c.facts],
        )
        return {m.key for m in c.mentions}

    @staticmethod
    def _merge_entity(db: sqlite3.Connection, key: str) -> None:
        """The entity `key` as its captures merge it (merge.merge_facts' rule), or gone with the last one."""
        mentions = db.execute(
            """SELECT m.name, m.aliases FROM search_mentions m JOIN search_captures c ON c.sha256 = m.sha256
               WHERE m.key = ? ORDER BY c.ingested_at, c.sha256""",
            (key,),
        ).fetchall()
        old = db.execute("SELECT id FROM search_entities WHERE key = ?", (key,)).fetchone()
        if old is not None:
            db.execute("DELETE FROM search_entity_names WHERE rowid = ?", (old["id"],))
        if not mentions:
            db.execute("DELETE FROM search_entities WHERE key = ?", (key,))
            return
        name = mentions[0]["name"]
        aliases = sorted({alias for m in mentions for alias in json.loads(m["aliases"])})
        encoded = json.dumps(aliases, ensure_ascii=False)
        if old is None:
            entity_id = db.execute(
                "INSERT INTO search_entities (key, name, aliases) VALUES (?, ?, ?)", (key, name, encoded)
            ).lastrowid
        else:
            entity_id = old["id"]
            db.execute("UPDATE search_entities SET name = ?, aliases = ? WHERE id = ?", (name, encoded, entity_id))
        db.execute(
            "INSERT INTO search_entity_names (rowid, names) VALUES (?, ?)", (entity_id, "\n".join([name, *aliases]))
        )

    # -- reads

    def generation(self) -> int:
        """How many times `apply` changed the index: the same number means the same captures' facts."""
        return int(self._core.read("SELECT generation FROM search_generation WHERE id = 1")[0]["generation"])

    def entity_keys(self) -> list[str]:
        """Every indexed entity's key, sorted (fuzzy matching's known keys)."""
        return [row["key"] for row in self._core.read("SELECT key FROM search_entities ORDER BY key")]

    def entity_names(self, keys: Sequence[str]) -> list[Row]:
        """key, name, aliases (a list) of the entities with these keys."""
        marks = ",".join("?" * len(keys))
        rows = self._core.read(f"SELECT key, name, aliases FROM search_entities WHERE key IN ({marks})", tuple(keys))
        return [{**_row(r), "aliases": json.loads(r["aliases"])} for r in rows]

    def find_entities(self, terms: Sequence[str], key: str, limit: int) -> list[Row]:
        """Entities whose name or an alias holds every term as a word prefix; exact key first, then shorter keys."""
        rows = self._core.read(
            """SELECT e.key, e.name, e.aliases FROM search_entity_names n JOIN search_entities e ON e.id = n.rowid
               WHERE search_entity_names MATCH ? ORDER BY e.key = ? DESC, length(e.key), e.key LIMIT ?""",
            (fts_query(terms), key, limit),
        )
        return [{**_row(r), "aliases": json.loads(r["aliases"])} for r in rows]

    def find_captures(self, terms: Sequence[str], limit: int) -> list[Row]:
        """Captures whose title or text holds every term as a whole word, newest first."""
        rows = self._core.read(
            """SELECT c.sha256, c.path, c.title, c.captured_at, c.ingested_at, c.model, t.text
               FROM search_capture_text t JOIN search_captures c ON c.id = t.rowid
               WHERE search_capture_text MATCH ? ORDER BY c.ingested_at DESC, c.sha256 LIMIT ?""",
            (fts_query(terms, prefix=False), limit),
        )
        return [_row(r) for r in rows]

    def entity_facts(self, key: str) -> list[Row]:
        """The relationships of entity `key` both ways, each with its ends' names and its number of captures."""
        rows = self._core.read(
            """SELECT f.source_key, s.name AS source_name, f.type, f.target_key, o.name AS target_name,
                      count(*) AS sources
               FROM search_facts f JOIN search_entities s ON s.key = f.source_key
                    JOIN search_entities o ON o.key = f.target_key
               WHERE f.source_key = ?1 OR f.target_key = ?1
               GROUP BY f.source_key, f.type, f.target_key""",
            (key,),
        )
        return [_row(r) for r in rows]

    def newest_capture(self, key: str) -> Row | None:
        """The newest capture that names entity `key`."""
        rows = self._core.read(
            """SELECT c.sha256, c.path, c.title, c.captured_at, c.ingested_at, c.model
               FROM search_mentions m JOIN search_captures c ON c.sha256 = m.sha256
               WHERE m.key = ? ORDER BY c.ingested_at DESC, c.sha256 LIMIT 1""",
            (key,),
        )
        return _row(rows[0]) if rows else None
