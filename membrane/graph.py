"""The Neo4j projection: all Cypher, the migrations runner, the idempotent
batched upsert, retraction, and the Cypher script `membrane export` writes
(cypher_statements). The only module that imports neo4j; driver exceptions
become MembraneError here and nowhere else. How captures merge is
merge.merge_facts, for a batch here as for the whole journal in export.

Graph model (see docs/design-notes.md, "## Graph"):

    (:Capture {sha256, path, ingested_at, model, prompt_version, fingerprint})
    (:Entity {key, name, aliases, first_seen, last_seen})
    (:Capture)-[:MENTIONS {role, aliases}]->(:Entity)
    (:Entity)-[:<TYPE> {sources, first_seen, last_seen, model}]->(:Entity)

Timestamps are Neo4j DATETIMEs taken from CaptureFacts.ingested_at, never
from the clock: an entity's first_seen/last_seen are the min/max over the
captures that mention it, a relationship's over its `sources`, and its
`model` is that of its newest source (ties: the greater model name). A
capture whose stored fingerprint matches is skipped, and otherwise values are
only written when they change, so re-ingesting a capture leaves every node,
relationship and property as it was (element ids included).

Saved questions (membrane/queries/*.cypher) are the read queries people run:
each file is a Neo4j Browser favourite as it stands (a title comment, a
`// :param name => example` line per parameter, the query), and
`saved_questions()` strips the comments so the CLI runs the very same query
with driver parameters (see docs/design-notes.md, "The graph people see").

Relationship types travel as data: an existing fact is found by expanding out
of its source entity (a unique-key seek) to the target and filtering on the
type; a new one is CREATEd with the dynamic type `$(row.type)`. (A dynamic
MERGE plans an all-relationships scan on 5.26, hence no MERGE; both endpoints
are locked first, hence no duplicate.) Every type is checked against
RELATION_PATTERN before the transaction writes anything. Names and text are
only ever parameters.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache, cached_property, lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from neo4j import Driver, GraphDatabase, ManagedTransaction
from neo4j.exceptions import (
    AuthError,
    ConstraintError,
    DriverError,
    Neo4jError,
    ServiceUnavailable,
    SessionExpired,
    TransientError,
)
from neo4j.graph import Node, Relationship
from neo4j.graph import Path as GraphPath
from neo4j.time import DateTime

from membrane.config import Settings
from membrane.errors import ConfigError, GraphAuthFailed, GraphUnavailable, GraphWriteError
from membrane.logs import get_logger
from membrane.merge import MergedGraph, merge_facts
from membrane.resolve import CaptureFacts
from membrane.schema import RELATION_PATTERN, is_relation_type

__all__ = [
    "MIGRATIONS_DIR",
    "QUERIES_DIR",
    "GraphStore",
    "SavedQuestion",
    "cypher_literal",
    "cypher_statements",
    "fingerprint",
    "relationship_type_literal",
    "saved_questions",
    "write_queries",
]

log = get_logger(__name__)

T = TypeVar("T")



def _migrations_dir() -> Path:
    """The checkout's migrations/ (editable installs, tests), else the copy a
    wheel installs under <prefix>/share/membrane/migrations."""
    checkout = Path(__file__).resolve().parent.parent / "migrations"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "membrane" / "migrations"


MIGRATIONS_DIR = _migrations_dir()
QUERIES_DIR = Path(__file__).resolve().parent / "queries"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIGRATION_FILE = re.compile(r"^\d{4}_[a-z0-9_]+\.cypher$")
# A MERGE racing another under a uniqueness constraint can still fail its check;
# running the transaction again finds the winner's node.
_CONSTRAINT_RETRIES = 3
_RACE_CODES = ("Neo.ClientError.Schema.ConstraintValidationFailed",)
_ALREADY_EXISTS = ("EquivalentSchemaRuleAlreadyExists", "ConstraintAlreadyExists", "IndexAlreadyExists")
_AUTH_HINT = "Neo4j refused the credentials: check neo4j.user and the password (neo4j.password_file)."


def relationship_type_literal(rel_type: str) -> str:
    """The backquoted Cypher literal for a type in the alphabet; GraphWriteError
    otherwise. Every type is checked with it before it reaches a query."""
    if not is_relation_type(rel_type):
        raise GraphWriteError(f"relationship type {rel_type!r} is outside the alphabet {RELATION_PATTERN.pattern}")
    return f"`{rel_type}`"


# ---------------------------------------------------------------- Cypher
# Every statement starts from a unique-key lookup; tests EXPLAIN each one.

# Aliases and sources are read, extended and written back, which must not lose a
# concurrent writer's update: every transaction write-locks (a no-op SET) the
# captures and entities it touches before reading them, entities in key order.
# A relationship is only changed by a transaction holding both its endpoints.
_LOCK_CAPTURES = """
UNWIND $shas AS sha
MATCH (c:Capture {sha256: sha})
SET c.path = c.path
RETURN c.sha256 AS sha, c.fingerprint AS fingerprint
"""

# One statement per batch (a round trip costs more than the work on a small
# server): entities, then new captures with their mentions, then facts. Times
# arrive as integer microseconds since the epoch (see _capture_rows).
# Aliases and sources stay sorted in Cypher's own string order: each new value
# is inserted in place. ON MATCH SET e.name = e.name takes the entity's write
# lock before its aliases are read; entities come in key order.
# A fact is found by expanding between its endpoints and filtering on type(r);
# a new one is CREATEd with the dynamic type $(row.type) (a dynamic MERGE plans
# an all-relationships scan on 5.26). Both endpoints are locked: no duplicate.
_WRITE_BATCH = """
CALL () {
  UNWIND $entities AS row
  MERGE (e:Entity {key: row.key})
  ON CREATE SET e.name = row.name
  ON MATCH SET e.name = e.name
  WITH e, row, datetime({epochSeconds: row.first_seen / 1000000,
      nanosecond: row.first_seen % 1000000 * 1000}) AS rf,
    datetime({epochSeconds: row.last_seen / 1000000,
      nanosecond: row.last_seen % 1000000 * 1000}) AS rl
  WITH e,
    reduce(acc = coalesce(e.aliases, []), a IN row.aliases |
      CASE WHEN a IN acc THEN acc ELSE [x IN acc WHERE x < a] + [a] + [x IN acc WHERE x > a] END) AS aliases,
    CASE WHEN e.first_seen IS NULL OR rf < e.first_seen THEN rf ELSE e.first_seen END AS first,
    CASE WHEN e.last_seen IS NULL OR rl > e.last_seen THEN rl ELSE e.last_seen END AS last
  FOREACH (_ IN CASE WHEN e.aliases = aliases AND e.first_seen = first AND e.last_seen = last THEN [] ELSE [1] END |
    SET e.aliases = aliases, e.first_seen = first, e.last_seen = last)
}
CALL () {
  UNWIND $captures AS row
  CREATE (c:Capture {
    sha256: row.sha256, path: row.path, model: row.model, prompt_version: row.prompt_version,
    fingerprint: row.fingerprint,
    ingested_at: datetime({epochSeconds: row.ingested_at / 1000000, nanosecond: row.ingested_at % 1000000 * 1000})
  })
  WITH c, row
  UNWIND row.mentions AS mention
  MATCH (e:Entity {key: mention.key})
  CREATE (c)-[:MENTIONS {role: mention.role, aliases: mention.aliases}]->(e)
}
CALL () {
  UNWIND $relationships AS row
  MATCH (s:Entity {key: row.source})
  MATCH (o:Entity {key: row.target})
  // Expand out of s and keep those ending at o, then pick the type in a list.
  // Written as (s)-[y]->(o), or with a type(y) = row.type predicate, 5.26 may
  // plan a scan over every relationship (it does when planned on an empty graph).
  CALL (s, o) {
    MATCH (s)-[y]->(t)
    WHERE t = o
    RETURN collect(y) AS between
  }
  WITH s, o, row, head([x IN between WHERE type(x) = row.type]) AS r
  WITH s, o, r, row, datetime({epochSeconds: row.first_seen / 1000000,
      nanosecond: row.first_seen % 1000000 * 1000}) AS rf,
    datetime({epochSeconds: row.last_seen / 1000000,
      nanosecond: row.last_seen % 1000000 * 1000}) AS rl
  FOREACH (_ IN CASE WHEN r IS NULL THEN [1] ELSE [] END |
    CREATE (s)-[:$(row.type) {sources: row.sources, first_seen: rf, last_seen: rl, model: row.model}]->(o))
  WITH r, row, rf, rl WHERE r IS NOT NULL
  WITH r,
    reduce(acc = r.sources, x IN row.sources |
      CASE WHEN x IN acc THEN acc ELSE [y IN acc WHERE y < x] + [x] + [y IN acc WHERE y > x] END) AS sources,
    CASE WHEN rf < r.first_seen THEN rf ELSE r.first_seen END AS first,
    CASE WHEN rl > r.last_seen THEN rl ELSE r.last_seen END AS last,
    CASE WHEN rl > r.last_seen OR (rl = r.last_seen AND row.model > r.model) THEN row.model ELSE r.model END AS model
  FOREACH (_ IN CASE WHEN r.sources = sources AND r.first_seen = first AND r.last_seen = last AND r.model = model
                THEN [] ELSE [1] END |
    SET r.sources = sources, r.first_seen = first, r.last_seen = last, r.model = model)
}
"""

# Captures already in the graph (re-ingest, re-projection): merge, write changes only.
_MERGE_CAPTURES = """
UNWIND $captures AS row
MATCH (c:Capture {sha256: row.sha256})
WITH c, row, {
  path: row.path, model: row.model, prompt_version: row.prompt_version, fingerprint: row.fingerprint,
  ingested_at: datetime({epochSeconds: row.ingested_at / 1000000, nanosecond: row.ingested_at % 1000000 * 1000})
} AS props
FOREACH (_ IN CASE WHEN c {.path, .ingested_at, .model, .prompt_version, .fingerprint} = props THEN [] ELSE [1] END |
  SET c += props)
WITH c, row
UNWIND row.mentions AS mention
MATCH (e:Entity {key: mention.key})
MERGE (c)-[m:MENTIONS]->(e)
FOREACH (_ IN CASE WHEN m.role = mention.role AND m.aliases = mention.aliases THEN [] ELSE [1] END |
  SET m.role = mention.role, m.aliases = mention.aliases)
"""

# Relationships a capture supported that are not in $keep ([source, type, target]):
# both endpoints of every fact are mentioned by its capture, so expanding from the
# capture's mentions finds them all without a scan.
_DROP_SOLE_SUPPORT = """
MATCH (c:Capture {sha256: $sha})-[:MENTIONS]->(s:Entity)-[r]->(o:Entity)
WHERE r.sources = [$sha] AND NOT [s.key, type(r), o.key] IN $keep
DELETE r
"""

_DROP_SHARED_SUPPORT = """
MATCH (c:Capture {sha256: $sha})-[:MENTIONS]->(s:Entity)-[r]->(o:Entity)
WHERE $sha IN r.sources AND NOT [s.key, type(r), o.key] IN $keep
SET r.sources = [x IN r.sources WHERE x <> $sha]
WITH r
CALL (r) {
  UNWIND r.sources AS sha
  MATCH (src:Capture {sha256: sha})
  WITH src ORDER BY src.ingested_at DESC, src.model DESC
  RETURN min(src.ingested_at) AS first, max(src.ingested_at) AS last, head(collect(src.model)) AS model
}
SET r.first_seen = first, r.last_seen = last, r.model = model
"""

# Mentions that differ from $mentions ([{key, role, aliases}]); returns the keys to refresh.
_DROP_MENTIONS = """
MATCH (c:Capture {sha256: $sha})-[m:MENTIONS]->(e:Entity)
WITH m, e, [x IN $mentions WHERE x.key = e.key] AS now
WHERE size(now) = 0 OR now[0].role <> m.role OR now[0].aliases <> m.aliases
DELETE m
RETURN e.key AS key
"""

_LOCK_MENTIONED = """
MATCH (c:Capture {sha256: $sha})-[:MENTIONS]->(e:Entity)
WITH c, e ORDER BY e.key
SET c.path = c.path, e.name = e.name
"""

_DELETE_CAPTURE = "MATCH (c:Capture {sha256: $sha}) DETACH DELETE c"

_REFRESH_ENTITIES = """
UNWIND $keys AS key
MATCH (e:Entity {key: key})
OPTIONAL MATCH (c:Capture)-[m:MENTIONS]->(e)
WITH e, c, m ORDER BY c.ingested_at, c.sha256
WITH e, collect(m.aliases) AS forms, min(c.ingested_at) AS first, max(c.ingested_at) AS last
WHERE size(forms) > 0
CALL (forms) {
  UNWIND forms AS names
  UNWIND names AS alias
  WITH DISTINCT alias ORDER BY alias
  RETURN collect(alias) AS aliases
}
SET e.aliases = aliases, e.first_seen = first, e.last_seen = last,
    e.name = CASE WHEN e.name IN aliases THEN e.name ELSE forms[0][0] END
"""

_DELETE_ORPHANS = """
UNWIND $keys AS key
MATCH (e:Entity {key: key})
WHERE NOT EXISTS { (e)--() }
DELETE e
"""

_MIGRATION_CONSTRAINT = (
    "CREATE CONSTRAINT membrane_migration_name IF NOT EXISTS "
    "FOR (m:MembraneMigration) REQUIRE m.name IS UNIQUE"
)
_APPLIED_MIGRATIONS = "MATCH (m:MembraneMigration) RETURN m.name AS name"
_RECORD_MIGRATION = """
MERGE (m:MembraneMigration {name: $name})
ON CREATE SET m.applied_at = datetime(), m.checksum = $checksum
"""




def write_queries() -> dict[str, str]:
    """Every query upsert/replace/retract runs, by name (for EXPLAIN checks)."""
    return {
        "lock_captures": _LOCK_CAPTURES,
        "lock_mentioned": _LOCK_MENTIONED,
        "write_batch": _WRITE_BATCH,
        "merge_captures": _MERGE_CAPTURES,
        "drop_sole_support": _DROP_SOLE_SUPPORT,
        "drop_shared_support": _DROP_SHARED_SUPPORT,
        "drop_mentions": _DROP_MENTIONS,
        "delete_capture": _DELETE_CAPTURE,
        "refresh_entities": _REFRESH_ENTITIES,
        "delete_orphans": _DELETE_ORPHANS,
    }


# ---------------------------------------------------------------- saved questions

# "// :param name => example": a comment, so the favourite stays one statement
# (Browser shows a multi-statement run as summaries, without the graph).
_PARAM_LINE = re.compile(r"^//\s*:param\s+([A-Za-z_][A-Za-z0-9_]*)\s*=>")


@dataclass(frozen=True)
class SavedQuestion:
    """One file of membrane/queries, named by its stem: `text` is what Neo4j
    Browser takes (a favourite); the rest is read from it."""

    name: str
    text: str

    @cached_property
    def _lines(self) -> list[str]:
        return self.text.splitlines()

    @property
    def title(self) -> str:
        """The first comment line, else the name."""
        first = self._lines[0] if self._lines else ""
        return first.removeprefix("//").strip() if first.startswith("//") else self.name

    @property
    def query(self) -> str:
        """What the driver runs: the text without its comment lines."""
        return "\n".join(line for line in self._lines if not line.lstrip().startswith("//")).strip()

    @property
    def params(self) -> tuple[str, ...]:
        """The names the `// :param` lines set, in order."""
        return tuple(name for name, _ in self._declared)

    @property
    def param_commands(self) -> tuple[str, ...]:
        """Those lines as the Browser commands to run first (with their example values)."""
        return tuple(command for _, command in self._declared)

    @cached_property
    def _declared(self) -> list[tuple[str, str]]:
        return [(m.group(1), line.removeprefix("//").strip()) for line in self._lines if (m := _PARAM_LINE.match(line))]


@cache
def saved_questions() -> dict[str, SavedQuestion]:
    """Every saved question by name (the file stem), read once."""
    return {path.stem: SavedQuestion(path.stem, path.read_text(encoding="utf-8")) for path in sorted(QUERIES_DIR.glob("*.cypher"))}


# A read runs at read-committed: a node deleted by a retraction while the read
# runs comes back with null properties, so such rows are dropped here.
_ENTITY_NAMES = (
    "MATCH (e:Entity) WITH e.key AS key, e.name AS name, e.aliases AS aliases WHERE key IS NOT NULL "
    "RETURN key, name, coalesce(aliases, []) AS aliases ORDER BY key"
)


def _iso(moment: DateTime) -> str:
    """A stored DATETIME in resolve.normalize_timestamp's form, so the graph and
    the journal print the same string."""
    return moment.to_native().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _plain(value: Any) -> Any:
    """Driver values as plain Python: nodes as property dicts, DATETIMEs as ISO strings."""
    if isinstance(value, DateTime):
        return _iso(value)
    if isinstance(value, Node):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Relationship):
        ends = {"start": _plain(value.start_node), "end": _plain(value.end_node)}
        return {"type": value.type, **ends, **{k: _plain(v) for k, v in value.items()}}
    if isinstance(value, GraphPath):
        return {"nodes": [_plain(n) for n in value.nodes], "relationships": [_plain(r) for r in value.relationships]}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _ask(tx: ManagedTransaction, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    question = saved_questions()[name]
    missing = sorted(set(question.params) - set(params))
    if missing:  # a programming error: the caller must pass what the Browser's :param lines set
        raise ValueError(f"saved question {name!r} needs the parameters {', '.join(missing)}")
    records = tx.run(question.query, params)
    # neo4j's Record.items() carries no annotations.
    return [{k: _plain(v) for k, v in record.items()} for record in records]  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------- a Cypher script (membrane export)
# Capture text and model output are untrusted: every value is an escaped Cypher
# literal (cypher_literal) on a `:param` line, never pasted into a statement,
# and a relationship type is placed only as relationship_type_literal returns it.

_ESCAPES = {"\\": "\\\\", "'": "\\'", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}


def _escape_char(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    # Control characters, line and paragraph separators, and lone surrogates as \\u escapes,
    # so no character can end the literal or the line it sits on.
    if code < 0x20 or code == 0x7F or 0x2028 <= code <= 0x2029 or 0xD800 <= code <= 0xDFFF:
        return f"\\u{code:04x}"
    return char


def cypher_literal(value: Any) -> str:
    """A Cypher literal for a str, int, float, bool, None, list of them or map with identifier keys."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return "'" + "".join(_escape_char(c) for c in value) + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(cypher_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        # Keys are our own identifiers (never model text), checked all the same.
        if not all(isinstance(k, str) and k.isidentifier() for k in value):
            raise TypeError("map keys must be identifiers")
        return "{" + ", ".join(f"{k}: {cypher_literal(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Cypher literal for {type(value).__name__}")


_SCRIPT_CAPTURES = (
    "UNWIND $captures AS row MERGE (c:Capture {sha256: row.sha256}) "
    "SET c.path = row.path, c.ingested_at = datetime(row.ingested_at), c.model = row.model, "
    "c.prompt_version = row.prompt_version;"
)
_SCRIPT_ENTITIES = (
    "UNWIND $entities AS row MERGE (e:Entity {key: row.key}) "
    "SET e.name = row.name, e.aliases = row.aliases, e.first_seen = datetime(row.first_seen), "
    "e.last_seen = datetime(row.last_seen);"
)
_SCRIPT_MENTIONS = (
    "UNWIND $mentions AS row MATCH (c:Capture {sha256: row.sha256}) MATCH (e:Entity {key: row.key}) "
    "MERGE (c)-[m:MENTIONS]->(e) SET m.role = row.role, m.aliases = row.aliases;"
)
# {type} is relationship_type_literal's backquoted type.
_SCRIPT_RELATIONSHIPS = (
    "UNWIND $rows AS row MATCH (s:Entity {{key: row.source}}) MATCH (o:Entity {{key: row.target}}) "
    "MERGE (s)-[r:{type}]->(o) SET r.sources = row.sources, r.first_seen = datetime(row.first_seen), "
    "r.last_seen = datetime(row.last_seen), r.model = row.model;"
)


def cypher_statements(merged: MergedGraph) -> Iterator[str]:
    """The graph as a script for cypher-shell or Neo4j Browser: `:param` lines
    holding the data as escaped literals, each followed by a statement reading
    it; the graph model is this module's (timestamps as DATETIME), and running
    it twice changes nothing."""
    batches: list[tuple[str, str, list[dict[str, Any]]]] = [
        ("captures", _SCRIPT_CAPTURES, list(merged.capture_rows())),
        ("entities", _SCRIPT_ENTITIES, list(merged.entity_rows())),
        ("mentions", _SCRIPT_MENTIONS, list(merged.mention_rows())),
    ]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for rel in merged.relationship_rows():
        by_type.setdefault(rel.pop("type"), []).append(rel)
    for rel_type, rows in sorted(by_type.items()):
        batches.append(("rows", _SCRIPT_RELATIONSHIPS.format(type=relationship_type_literal(rel_type)), rows))
    for name, statement, rows in batches:
        if rows:
            yield f":param {name} => {cypher_literal(rows)}"
            yield statement


# ---------------------------------------------------------------- rows


def _capture_rows(batch: Sequence[CaptureFacts], fingerprints: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """Parameters for one batch, merged by merge.merge_facts so each key is
    written once; entities sorted by key, so writers lock in one order.
    Times travel as integer microseconds since the epoch: cheaper to send than
    datetime values and cheaper for the server to read than ISO strings."""
    merged = merge_facts(batch)
    return {
        "captures": [
            {"sha256": c.sha256, "path": c.path, "ingested_at": _moment(c.ingested_at), "model": c.model,
             "prompt_version": c.prompt_version, "fingerprint": fingerprints[c.sha256],
             "mentions": [{"key": e.key, "role": e.role, "aliases": list(e.aliases)} for e in c.entities]}
            for c in sorted(batch, key=lambda c: c.sha256)
        ],
        "entities": [{**row, **_moments(row)} for row in merged.entity_rows()],
        "relationships": [{**row, **_moments(row)} for row in merged.relationship_rows()],
    }


def _moments(row: dict[str, Any], keys: tuple[str, ...] = ("first_seen", "last_seen")) -> dict[str, int]:
    return {key: _moment(row[key]) for key in keys}


@lru_cache(maxsize=4096)
def _moment(timestamp: str) -> int:
    moment = datetime.fromisoformat(timestamp)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def fingerprint(facts: CaptureFacts) -> str:
    """A digest of everything a capture contributes; stored on its node so an
    unchanged re-ingest is recognised with one lookup and writes nothing."""
    payload = [
        facts.sha256, facts.path, facts.ingested_at, facts.model, facts.prompt_version,
        [[e.key, e.name, e.role, e.aliases] for e in facts.entities],
        [[r.source_key, r.type, r.target_key] for r in facts.relationships],
    ]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def _batches(captures: Iterable[CaptureFacts], max_rows: int) -> Iterator[list[CaptureFacts]]:
    batch: list[CaptureFacts] = []
    rows = 0
    for capture in captures:
        size = 1 + len(capture.entities) + len(capture.relationships)
        if batch and rows + size > max_rows:
            yield batch
            batch, rows = [], 0
        batch.append(capture)
        rows += size
    if batch:
        yield batch


# ---------------------------------------------------------------- transaction work


def _run(tx: ManagedTransaction, query: str, **params: Any) -> list[dict[str, Any]]:
    return [record.data() for record in tx.run(query, params)]


def _prune(tx: ManagedTransaction, sha: str, capture: CaptureFacts | None) -> list[str]:
    """Withdraw `sha`'s support from every fact `capture` no longer states (all of
    them when capture is None); returns the entity keys to refresh."""
    keep = [[r.source_key, r.type, r.target_key] for r in capture.relationships] if capture else []
    mentions = (
        [{"key": e.key, "role": e.role, "aliases": list(e.aliases)} for e in capture.entities] if capture else []
    )
    _run(tx, _LOCK_MENTIONED, sha=sha)
    _run(tx, _DROP_SOLE_SUPPORT, sha=sha, keep=keep)
    _run(tx, _DROP_SHARED_SUPPORT, sha=sha, keep=keep)
    return [row["key"] for row in _run(tx, _DROP_MENTIONS, sha=sha, mentions=mentions)]


def _refresh(tx: ManagedTransaction, keys: list[str]) -> None:
    if keys:
        keys = sorted(set(keys))
        _run(tx, _REFRESH_ENTITIES, keys=keys)
        _run(tx, _DELETE_ORPHANS, keys=keys)


def _upsert_work(tx: ManagedTransaction, batch: Sequence[CaptureFacts]) -> None:
    for capture in batch:  # checked before anything is written
        for rel in capture.relationships:
            relationship_type_literal(rel.type)
    batch = list({c.sha256: c for c in batch}.values())  # a capture twice in a batch: the last one counts
    stored = {r["sha"]: r["fingerprint"] for r in _run(tx, _LOCK_CAPTURES, shas=sorted(c.sha256 for c in batch))}
    prints = {c.sha256: fingerprint(c) for c in batch}
    # A capture stored with the same fingerprint is already in the graph as it is.
    batch = [c for c in batch if stored.get(c.sha256) != prints[c.sha256]]
    if not batch:
        return
    rows = _capture_rows(batch, prints)
    known = set(stored)
    stale: list[str] = []
    for capture in batch:
        if capture.sha256 in known:  # re-ingest or re-projection: drop what it no longer states
            stale += _prune(tx, capture.sha256, capture)
    fresh = [c for c in rows["captures"] if c["sha256"] not in known]
    again = [c for c in rows["captures"] if c["sha256"] in known]
    _run(tx, _WRITE_BATCH, entities=rows["entities"], captures=fresh, relationships=rows["relationships"])
    if again:
        _run(tx, _MERGE_CAPTURES, captures=again)
    _refresh(tx, stale)


def _retract_work(tx: ManagedTransaction, sha: str) -> None:
    keys = _prune(tx, sha, None)
    _run(tx, _DELETE_CAPTURE, sha=sha)
    _refresh(tx, keys)


def _migration_statements(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("//")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


# ---------------------------------------------------------------- the store


class GraphStore:
    """A connection to the graph; thread-safe (each call opens its own session)."""

    def __init__(self, driver: Driver, settings: Settings) -> None:
        self._driver = driver
        self._settings = settings
        self._database = settings.neo4j.database

    @classmethod
    def connect(cls, settings: Settings) -> GraphStore:
        """Open and verify a connection; ConfigError when Neo4j is not configured,
        GraphAuthFailed when it refuses the credentials, GraphUnavailable when it
        does not answer."""
        neo4j = settings.neo4j
        if not neo4j.enabled:
            raise ConfigError("neo4j.uri is empty: Neo4j is not configured", key="neo4j.uri")
        try:
            driver = GraphDatabase.driver(
                neo4j.uri,
                auth=(neo4j.user, settings.neo4j_password()),
                connection_timeout=neo4j.connect_timeout_s,
                max_transaction_retry_time=neo4j.max_retry_time_s,
            )
        except (ValueError, Neo4jError, DriverError) as exc:
            raise ConfigError(f"neo4j.uri = {neo4j.uri!r}: {exc}", key="neo4j.uri") from exc
        store = cls(driver, settings)
        try:
            store.ping()
        except BaseException:  # GraphUnavailable, or GraphWriteError for a missing database
            driver.close()
            raise
        return store

    def close(self) -> None:
        self._driver.close()

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- health

    def ping(self) -> None:
        """Raise GraphUnavailable unless the server answers an authenticated query."""
        self._read(lambda tx: _run(tx, "RETURN 1 AS ok"))

    def server_info(self) -> dict[str, str]:
        rows = self._read(lambda tx: _run(tx, "CALL dbms.components() YIELD versions, edition RETURN *"))
        return {"version": rows[0]["versions"][0], "edition": rows[0]["edition"]}

    # -- schema

    def migrate(self, directory: Path | None = None) -> list[str]:
        """Apply pending migrations in name order; returns those this call recorded.

        Each statement must be idempotent (IF NOT EXISTS): two processes may run
        the same migration at once, and the unique name decides who records it.
        """
        directory = directory or MIGRATIONS_DIR
        files = sorted(p for p in directory.glob("*.cypher") if _MIGRATION_FILE.match(p.name))
        self._schema(_MIGRATION_CONSTRAINT)
        done = {r["name"] for r in self._read(lambda tx: _run(tx, _APPLIED_MIGRATIONS))}
        applied: list[str] = []
        for path in files:
            if path.name in done:
                continue
            text = path.read_text(encoding="utf-8")
            for statement in _migration_statements(text):
                self._schema(statement)
            if self._record_migration(path.name, text):
                applied.append(path.name)
                log.info("migration_applied", name=path.name)
        return applied

    def _schema(self, statement: str) -> None:
        try:
            self._write(lambda tx: tx.run(statement).consume(), capture=None)
        except GraphWriteError as exc:
            # A concurrent migrator created the same rule between our check and ours.
            if not any(code in str(exc) for code in _ALREADY_EXISTS):
                raise

    def _record_migration(self, name: str, text: str) -> bool:
        checksum = hashlib.sha256(text.encode("utf-8")).hexdigest()
        summary = self._write(
            lambda tx: tx.run(_RECORD_MIGRATION, name=name, checksum=checksum).consume(), capture=None
        )
        return bool(summary.counters.nodes_created)

    # -- writes

    def upsert(self, facts: CaptureFacts) -> None:
        """Write one capture's facts in one transaction; idempotent."""
        started = time.perf_counter()
        self._write(lambda tx: _upsert_work(tx, [facts]), capture=facts.sha256)
        log.debug(
            "graph_upserted",
            sha256=facts.sha256,
            entities=len(facts.entities),
            relationships=len(facts.relationships),
            seconds=round(time.perf_counter() - started, 4),
        )

    def upsert_many(self, captures: Iterable[CaptureFacts], *, batch_rows: int | None = None) -> int:
        """Write many captures (sync, re-projection), graph.batch_size rows per
        transaction; the result equals upserting them one by one in ingested_at
        order. Returns the number of transactions."""
        transactions = 0
        for batch in _batches(captures, batch_rows or self._settings.graph.batch_size):
            self._write(functools.partial(_upsert_work, batch=batch), capture=",".join(c.sha256 for c in batch[:3]))
            transactions += 1
        return transactions

    def replace(self, old_sha256: str, facts: CaptureFacts) -> None:
        """An edited capture: retract the old version and write the new one, in one transaction."""

        def work(tx: ManagedTransaction) -> None:
            if old_sha256 != facts.sha256:
                _retract_work(tx, old_sha256)
            _upsert_work(tx, [facts])

        self._write(work, capture=facts.sha256)
        log.debug("graph_replaced", old_sha256=old_sha256, sha256=facts.sha256)

    def retract(self, sha256: str) -> None:
        """Remove a capture and every fact only it supported; no-op if unknown."""
        self._write(lambda tx: _retract_work(tx, sha256), capture=sha256)
        log.debug("graph_retracted", sha256=sha256)

    # -- reads

    def capture_shas(self) -> set[str]:
        return {r["sha"] for r in self._read(lambda tx: _run(tx, "MATCH (c:Capture) RETURN c.sha256 AS sha"))}

    def capture_for_path(self, path: str) -> str | None:
        """The sha256 of the capture stored for `path` (the newest), if any."""
        rows = self._read(
            lambda tx: _run(
                tx,
                "MATCH (c:Capture {path: $path}) RETURN c.sha256 AS sha ORDER BY c.ingested_at DESC LIMIT 1",
                path=path,
            )
        )
        return rows[0]["sha"] if rows else None

    def entity_keys(self) -> list[str]:
        rows = self._read(lambda tx: _run(tx, "MATCH (e:Entity) RETURN e.key AS key ORDER BY key"))
        return [r["key"] for r in rows]

    def ask(self, name: str, **params: Any) -> list[dict[str, Any]]:
        """Run the saved question `name` (membrane/queries/NAME.cypher) with
        `params`; rows as plain Python (nodes and relationships as property
        dicts, a relationship with its type and both end nodes)."""
        return self._read(lambda tx: _ask(tx, name, params))

    def entity_names(self) -> list[dict[str, Any]]:
        """key, name and aliases of every entity, by key (for resolving a name)."""
        return self._read(lambda tx: _run(tx, _ENTITY_NAMES))

    def counts(self) -> dict[str, int]:
        """captures, entities, mentions and relationships (between entities)."""
        query = """
        CALL () { MATCH (c:Capture) RETURN count(c) AS captures }
        CALL () { MATCH (e:Entity) RETURN count(e) AS entities }
        CALL () { MATCH ()-[m:MENTIONS]->() RETURN count(m) AS mentions }
        CALL () { MATCH ()-[r]->() RETURN count(r) AS edges }
        RETURN captures, entities, mentions, edges - mentions AS relationships
        """
        row = self._read(lambda tx: _run(tx, query))[0]
        return {k: int(row[k]) for k in ("captures", "entities", "mentions", "relationships")}

    # -- the one boundary for driver errors

    def _read(self, work: Callable[[ManagedTransaction], T]) -> T:
        try:
            with self._driver.session(database=self._database) as session:
                return session.execute_read(work)
        except Exception as exc:
            raise _translated(exc, None)

    def _write(self, work: Callable[[ManagedTransaction], T], *, capture: str | None) -> T:
        for attempt in range(_CONSTRAINT_RETRIES + 1):
            try:
                with self._driver.session(database=self._database) as session:
                    return session.execute_write(work)
            except ConstraintError as exc:
                if exc.code not in _RACE_CODES or attempt == _CONSTRAINT_RETRIES:
                    raise _translated(exc, capture)
                log.info("graph_write_race_retried", sha256=capture, attempt=attempt + 1)
                time.sleep(0.05 * 2**attempt)
            except Exception as exc:
                raise _translated(exc, capture)
        raise AssertionError("unreachable")  # pragma: no cover


def _translated(exc: Exception, capture: str | None) -> Exception:
    """The MembraneError for a driver exception (chained to it); others unchanged."""
    error = _translate(exc, capture)
    if error is not exc:
        error.__cause__ = exc
    return error


def _translate(exc: Exception, capture: str | None) -> Exception:
    if isinstance(exc, (GraphWriteError, GraphUnavailable, ConfigError)):
        return exc
    about = f"capture {capture}: " if capture else ""
    if isinstance(exc, AuthError):
        # Retryable: captures wait in the journal until the password is fixed;
        # `membrane doctor` reports it as its own line.
        return GraphAuthFailed(f"{about}Neo4j refused the credentials ({exc.code})", hint=_AUTH_HINT)
    if isinstance(exc, (ServiceUnavailable, SessionExpired, TransientError)):
        log.warning("graph_unavailable", sha256=capture, error=type(exc).__name__)
        return GraphUnavailable(f"{about}Neo4j is unavailable after retries: {exc}")
    if isinstance(exc, Neo4jError):
        return GraphWriteError(f"{about}Neo4j refused the query: {exc.code}: {exc.message}")
    if isinstance(exc, DriverError):
        return GraphUnavailable(f"{about}Neo4j driver error: {exc}")
    return exc
