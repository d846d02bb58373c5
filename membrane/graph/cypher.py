"""Cypher text: every query the store runs, the statements of the script
`membrane export` writes, and the functions that place a value or a
relationship type in Cypher text. Nothing here runs a query: the store
(graph/store.py) runs these, the export writer (export.py) prints them.

Names and text are only ever parameters, or, in the export script, escaped
literals on `:param` lines (cypher_literal). A relationship type is the one
thing placed in query text, and only as relationship_type_literal returns it,
after the check against RELATION_PATTERN. In a query the store runs, types
travel as data: an existing fact is found by expanding out of its source
entity (a unique-key seek) to the target and filtering on the type; a new one
is CREATEd with the dynamic type `$(row.type)`. (A dynamic MERGE plans an
all-relationships scan on 5.26, hence no MERGE; both endpoints are locked
first, hence no duplicate.)

The saved questions people run are files (membrane/queries/*.cypher, read by
graph/questions.py), not constants here.

Full-text searches take a Lucene query string as a parameter; lucene_query
builds it from the caller's words with every Lucene special character
escaped, so a word is only ever a term.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from membrane.errors import GraphWriteError
from membrane.schema import RELATION_PATTERN, is_relation_type

__all__ = [
    "APPLIED_MIGRATIONS",
    "CAPTURE_FOR_PATH",
    "CAPTURE_SHAS",
    "COUNTS",
    "DELETE_CAPTURE",
    "DELETE_ORPHANS",
    "DROP_MENTIONS",
    "DROP_SHARED_SUPPORT",
    "DROP_SOLE_SUPPORT",
    "ENTITY_KEYS",
    "ENTITY_NAMES",
    "LOCK_CAPTURES",
    "LOCK_MENTIONED",
    "MERGE_CAPTURES",
    "MIGRATION_CONSTRAINT",
    "PING",
    "RECORD_MIGRATION",
    "REDATE_SUPPORT",
    "REFRESH_ENTITIES",
    "SEARCH",
    "SHORTEST_PATHS",
    "SEARCH_DETAILS",
    "SEARCH_ENTITIES",
    "SCRIPT_CAPTURES",
    "SCRIPT_ENTITIES",
    "SCRIPT_MENTIONS",
    "SERVER_COMPONENTS",
    "WRITE_BATCH",
    "cypher_literal",
    "lucene_query",
    "param_line",
    "relationship_type_literal",
    "script_relationships",
    "write_queries",
]


def relationship_type_literal(rel_type: str) -> str:
    """The backquoted Cypher literal for a type in the alphabet; GraphWriteError
    otherwise. Every type is checked with it before it reaches a query."""
    if not is_relation_type(rel_type):
        raise GraphWriteError(f"relationship type {rel_type!r} is outside the alphabet {RELATION_PATTERN.pattern}")
    return f"`{rel_type}`"


# ---------------------------------------------------------------- writes and retraction
# Every statement starts from a unique-key lookup; tests EXPLAIN each one.

# Aliases and sources are read, extended and written back, which must not lose a
# concurrent writer's update: every transaction write-locks (a no-op SET) the
# captures and entities it touches before reading them, entities in key order.
# A relationship is only changed by a transaction holding both its endpoints.
LOCK_CAPTURES = """
UNWIND $shas AS sha
MATCH (c:Capture {sha256: sha})
SET c.path = c.path
RETURN c.sha256 AS sha, c.fingerprint AS fingerprint
"""

# One statement per batch (a round trip costs more than the work on a small
# server): entities, then new captures with their mentions, then facts. Times
# arrive as integer microseconds since the epoch (see rows.write_params).
# Aliases and sources stay sorted in Cypher's own string order: each new value
# is inserted in place. ON MATCH SET e.name = e.name takes the entity's write
# lock before its aliases are read; entities come in key order. A MERGE that
# waited for that lock while another transaction deleted the node (a retraction
# dropping an orphan) holds a deleted node and would write nothing through it,
# so the key is merged a second time once the lock is held.
# A fact is found by expanding between its endpoints and filtering on type(r);
# a new one is CREATEd with the dynamic type $(row.type) (a dynamic MERGE plans
# an all-relationships scan on 5.26). Both endpoints are locked: no duplicate.
WRITE_BATCH = """
CALL () {
  UNWIND $entities AS row
  MERGE (locked:Entity {key: row.key})
  ON CREATE SET locked.name = row.name
  ON MATCH SET locked.name = locked.name
  // The lock may have been granted on a node a retraction deleted meanwhile (an
  // orphan): merged again, the key finds the committed state, and a new node.
  WITH row
  MERGE (e:Entity {key: row.key})
  ON CREATE SET e.name = row.name
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
    fingerprint: row.fingerprint, title: row.title, captured_at: row.captured_at, text: row.text, tags: row.tags,
    ingested_at: datetime({epochSeconds: row.ingested_at / 1000000, nanosecond: row.ingested_at % 1000000 * 1000}),
    captured_utc: datetime({epochSeconds: row.captured_utc / 1000000, nanosecond: row.captured_utc % 1000000 * 1000})
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
MERGE_CAPTURES = """
UNWIND $captures AS row
MATCH (c:Capture {sha256: row.sha256})
WITH c, row, {
  path: row.path, model: row.model, prompt_version: row.prompt_version, fingerprint: row.fingerprint,
  title: row.title, captured_at: row.captured_at, text: row.text, tags: row.tags,
  ingested_at: datetime({epochSeconds: row.ingested_at / 1000000, nanosecond: row.ingested_at % 1000000 * 1000}),
  captured_utc: datetime({epochSeconds: row.captured_utc / 1000000, nanosecond: row.captured_utc % 1000000 * 1000})
} AS props
// A null in props removes that property (text storage turned off).
FOREACH (_ IN CASE WHEN c {.path, .ingested_at, .model, .prompt_version, .fingerprint, .title, .captured_at,
                           .captured_utc, .text, .tags} = props THEN [] ELSE [1] END |
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
DROP_SOLE_SUPPORT = """
MATCH (c:Capture {sha256: $sha})-[:MENTIONS]->(s:Entity)-[r]->(o:Entity)
WHERE r.sources = [$sha] AND NOT [s.key, type(r), o.key] IN $keep
DELETE r
"""

DROP_SHARED_SUPPORT = """
MATCH (c:Capture {sha256: $sha})-[:MENTIONS]->(s:Entity)-[r]->(o:Entity)
WHERE $sha IN r.sources AND NOT [s.key, type(r), o.key] IN $keep
SET r.sources = [x IN r.sources WHERE x <> $sha]
WITH r
CALL (r) {
  UNWIND r.sources AS sha
  MATCH (src:Capture {sha256: sha})
  WITH src, coalesce(src.captured_utc, src.ingested_at) AS at ORDER BY at DESC, src.model DESC
  RETURN min(at) AS first, max(at) AS last, head(collect(src.model)) AS model
}
SET r.first_seen = first, r.last_seen = last, r.model = model
"""

# A capture already in the graph written again with other values (its date, say, after
# an upgrade that added dates): the facts it supports are dated again from all their sources.
REDATE_SUPPORT = """
MATCH (c:Capture {sha256: $sha})-[:MENTIONS]->(s:Entity)-[r]->(o:Entity)
WHERE $sha IN r.sources
CALL (r) {
  UNWIND r.sources AS sha
  MATCH (src:Capture {sha256: sha})
  WITH src, coalesce(src.captured_utc, src.ingested_at) AS at ORDER BY at DESC, src.model DESC
  RETURN min(at) AS first, max(at) AS last, head(collect(src.model)) AS model
}
WITH r, first, last, model
WHERE NOT (r.first_seen = first AND r.last_seen = last AND r.model = model)
SET r.first_seen = first, r.last_seen = last, r.model = model
"""

# Mentions that differ from $mentions ([{key, role, aliases}]); returns the keys to refresh.
DROP_MENTIONS = """
MATCH (c:Capture {sha256: $sha})-[m:MENTIONS]->(e:Entity)
WITH m, e, [x IN $mentions WHERE x.key = e.key] AS now
WHERE size(now) = 0 OR now[0].role <> m.role OR now[0].aliases <> m.aliases
DELETE m
RETURN e.key AS key
"""

LOCK_MENTIONED = """
MATCH (c:Capture {sha256: $sha})-[:MENTIONS]->(e:Entity)
WITH c, e ORDER BY e.key
SET c.path = c.path, e.name = e.name
"""

DELETE_CAPTURE = "MATCH (c:Capture {sha256: $sha}) DETACH DELETE c"

REFRESH_ENTITIES = """
UNWIND $keys AS key
MATCH (e:Entity {key: key})
OPTIONAL MATCH (c:Capture)-[m:MENTIONS]->(e)
WITH e, c, m, coalesce(c.captured_utc, c.ingested_at) AS at ORDER BY c.ingested_at, c.sha256
WITH e, collect(m.aliases) AS forms, min(at) AS first, max(at) AS last
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

DELETE_ORPHANS = """
UNWIND $keys AS key
MATCH (e:Entity {key: key})
WHERE NOT EXISTS { (e)--() }
DELETE e
"""


def write_queries() -> dict[str, str]:
    """Every query upsert/replace/retract runs, by name (for EXPLAIN checks)."""
    return {
        "lock_captures": LOCK_CAPTURES,
        "lock_mentioned": LOCK_MENTIONED,
        "write_batch": WRITE_BATCH,
        "merge_captures": MERGE_CAPTURES,
        "drop_sole_support": DROP_SOLE_SUPPORT,
        "drop_shared_support": DROP_SHARED_SUPPORT,
        "redate_support": REDATE_SUPPORT,
        "drop_mentions": DROP_MENTIONS,
        "delete_capture": DELETE_CAPTURE,
        "refresh_entities": REFRESH_ENTITIES,
        "delete_orphans": DELETE_ORPHANS,
    }


# ---------------------------------------------------------------- migrations

MIGRATION_CONSTRAINT = (
    "CREATE CONSTRAINT membrane_migration_name IF NOT EXISTS FOR (m:MembraneMigration) REQUIRE m.name IS UNIQUE"
)
APPLIED_MIGRATIONS = "MATCH (m:MembraneMigration) RETURN m.name AS name"
RECORD_MIGRATION = """
MERGE (m:MembraneMigration {name: $name})
ON CREATE SET m.applied_at = datetime(), m.checksum = $checksum
"""


# ---------------------------------------------------------------- reads

PING = "RETURN 1 AS ok"
SERVER_COMPONENTS = "CALL dbms.components() YIELD versions, edition RETURN *"
CAPTURE_SHAS = "MATCH (c:Capture) RETURN c.sha256 AS sha"
CAPTURE_FOR_PATH = "MATCH (c:Capture {path: $path}) RETURN c.sha256 AS sha ORDER BY c.ingested_at DESC LIMIT 1"
ENTITY_KEYS = "MATCH (e:Entity) RETURN e.key AS key ORDER BY key"
# A read runs at read-committed: a node deleted by a retraction while the read
# runs comes back with null properties, so such rows are dropped here.
ENTITY_NAMES = (
    "MATCH (e:Entity) WITH e.key AS key, e.name AS name, e.aliases AS aliases WHERE key IS NOT NULL "
    "RETURN key, name, coalesce(aliases, []) AS aliases ORDER BY key"
)
COUNTS = """
CALL () { MATCH (c:Capture) RETURN count(c) AS captures }
CALL () { MATCH (e:Entity) RETURN count(e) AS entities }
CALL () { MATCH ()-[m:MENTIONS]->() RETURN count(m) AS mentions }
CALL () { MATCH ()-[r]->() RETURN count(r) AS edges }
RETURN captures, entities, mentions, edges - mentions AS relationships
"""


# ---------------------------------------------------------------- search
# The full-text indexes are migrations/0002_fulltext.cypher's. The order is the
# one the journal's index (journal/search.py) uses too; a read at read-committed
# may meet a node a retraction deleted mid-read (null key), which is dropped.

# Entities by their names' words ($names: prefixes), then captures by their words
# ($words: whole words), in one round trip; the caller ranks and checks them.
_SEARCH_ENTITIES = """
CALL () {
  CALL db.index.fulltext.queryNodes('entity_names', $names) YIELD node
  WITH node AS e WHERE e.key IS NOT NULL
  WITH e ORDER BY e.key = $key DESC, size(e.key), e.key LIMIT $limit
  RETURN collect({key: e.key, name: e.name, aliases: coalesce(e.aliases, [])}) AS entities
}
"""
SEARCH_ENTITIES = _SEARCH_ENTITIES + "RETURN entities, [] AS captures"
SEARCH = (
    _SEARCH_ENTITIES
    + """CALL () {
  CALL db.index.fulltext.queryNodes('capture_text', $words) YIELD node
  WITH node AS c WHERE c.sha256 IS NOT NULL
  WITH c ORDER BY c.ingested_at DESC, c.sha256 LIMIT $limit
  RETURN collect(c {.sha256, .path, .title, .captured_at, .ingested_at, .model, text: coalesce(c.text, '')}) AS captures
}
RETURN entities, captures
"""
)

# For each entity hit: its $facts relationships with the most captures behind
# them (then type, the other end's key, outgoing first), and its newest capture.
SEARCH_DETAILS = """
UNWIND $keys AS key
MATCH (e:Entity {key: key})
CALL (e) {
  MATCH (e)-[r]-(o:Entity)
  WITH r, o, startNode(r) = e AS outgoing
  ORDER BY size(r.sources) DESC, type(r), o.key, outgoing DESC LIMIT $facts
  RETURN collect({source_name: startNode(r).name, type: type(r), target_name: endNode(r).name,
                  sources: size(r.sources)}) AS facts
}
CALL (e) {
  MATCH (c:Capture)-[:MENTIONS]->(e)
  WITH c ORDER BY c.ingested_at DESC, c.sha256 LIMIT 1
  RETURN collect(c {.sha256, .path, .title, .captured_at, .ingested_at}) AS newest
}
RETURN e.key AS key, facts, newest
"""

# Every shortest path between two entities through relationships (never through
# the captures that mention both); the reader picks one by its keys. Bounded:
# a dense graph has combinatorially many.
SHORTEST_PATHS = """
MATCH (a:Entity {key: $from_key}), (b:Entity {key: $to_key})
MATCH path = allShortestPaths((a)-[*..8]-(b))
WHERE all(n IN nodes(path) WHERE n:Entity)
RETURN path LIMIT 1000
"""

_LUCENE_SPECIAL = frozenset('+-&|!(){}[]^"~*?:\\/')


def lucene_query(terms: Sequence[str], *, match: Literal["prefix", "word", "fuzzy"] = "prefix") -> str:
    """A Lucene query requiring every term: as a word's start (`term*`), as a whole word, or
    within two edits (`term~`); special characters are escaped."""
    suffix = {"prefix": "*", "word": "", "fuzzy": "~"}[match]
    return " AND ".join("".join("\\" + c if c in _LUCENE_SPECIAL else c for c in term) + suffix for term in terms)


# ---------------------------------------------------------------- the export script
# Capture text and model output are untrusted: every value is an escaped Cypher
# literal (cypher_literal) on a `:param` line, never pasted into a statement,
# and a relationship type is placed only as relationship_type_literal returns it.

SCRIPT_CAPTURES = (
    "UNWIND $captures AS row MERGE (c:Capture {sha256: row.sha256}) "
    "SET c.path = row.path, c.ingested_at = datetime(row.ingested_at), c.model = row.model, "
    "c.prompt_version = row.prompt_version, c.title = row.title, c.captured_at = row.captured_at, "
    "c.captured_utc = datetime(row.captured_utc), c.text = row.text, c.tags = row.tags;"
)
SCRIPT_ENTITIES = (
    "UNWIND $entities AS row MERGE (e:Entity {key: row.key}) "
    "SET e.name = row.name, e.aliases = row.aliases, e.first_seen = datetime(row.first_seen), "
    "e.last_seen = datetime(row.last_seen);"
)
SCRIPT_MENTIONS = (
    "UNWIND $mentions AS row MATCH (c:Capture {sha256: row.sha256}) MATCH (e:Entity {key: row.key}) "
    "MERGE (c)-[m:MENTIONS]->(e) SET m.role = row.role, m.aliases = row.aliases;"
)
# {type} is relationship_type_literal's backquoted type (see script_relationships).
_SCRIPT_RELATIONSHIPS = (
    "UNWIND $rows AS row MATCH (s:Entity {{key: row.source}}) MATCH (o:Entity {{key: row.target}}) "
    "MERGE (s)-[r:{type}]->(o) SET r.sources = row.sources, r.first_seen = datetime(row.first_seen), "
    "r.last_seen = datetime(row.last_seen), r.model = row.model;"
)


def script_relationships(rel_type: str) -> str:
    """The script's statement for the relationships of one type (checked, backquoted)."""
    return _SCRIPT_RELATIONSHIPS.format(type=relationship_type_literal(rel_type))


def param_line(name: str, value: Any) -> str:
    """The `:param` command that sets $name to `value`, as cypher-shell and Neo4j Browser read it."""
    return f":param {name} => {cypher_literal(value)}"


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
