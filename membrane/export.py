"""The graph written out from the journal alone: JSON Lines or a Cypher script.

Both are built from the same in-memory graph: every capture whose facts are
current (extracted, projected, done), resolved exactly as the projection does
(resolve.Resolver), then merged the way the graph merges them: one Entity per
key, one typed relationship per (source, type, target) with the sha256 of
every capture that supports it. No Neo4j is needed (the embedded default).

JSONL: one object per line, ``{"kind": "capture"|"entity"|"mention"|"relationship", ...}``.

Cypher: for cypher-shell or Neo4j Browser, one line each: a ``:param name =>
[...]`` line holding the data, then a MERGE statement reading it as $name
(the graph model of graph.py; run on an empty database or over the same
export again). Capture text and model output are
untrusted, so every value is an escaped Cypher literal (`cypher_literal`),
never pasted into a query, and a relationship type is placed only after it
matched schema.RELATION_PATTERN. Running the script twice changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TextIO

from membrane.errors import MembraneError
from membrane.journal import Journal
from membrane.schema import RELATION_PATTERN

if TYPE_CHECKING:
    from membrane.config import Settings
    from membrane.resolve import CaptureFacts

__all__ = ["ExportedGraph", "collect", "cypher_literal", "cypher_statements", "export", "jsonl_records", "write_cypher", "write_jsonl"]

Format = Literal["cypher", "jsonl"]


@dataclass
class ExportedGraph:
    """The graph as the journal defines it, merged across captures exactly as
    graph.GraphStore merges them (rows shaped like its query parameters)."""

    captures: list[dict[str, Any]] = field(default_factory=list)
    entities: dict[str, dict[str, Any]] = field(default_factory=dict)
    mentions: list[dict[str, Any]] = field(default_factory=list)
    relationships: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def add(self, facts: CaptureFacts) -> None:
        at = facts.ingested_at
        self.captures.append(
            {"sha256": facts.sha256, "path": facts.path, "ingested_at": at, "model": facts.model,
             "prompt_version": facts.prompt_version}
        )
        for entity in facts.entities:
            row = self.entities.setdefault(
                entity.key, {"key": entity.key, "name": entity.name, "aliases": [], "first_seen": at, "last_seen": at}
            )
            row["aliases"] = sorted(set(row["aliases"]) | set(entity.aliases))
            row["first_seen"], row["last_seen"] = min(row["first_seen"], at), max(row["last_seen"], at)
            self.mentions.append(
                {"sha256": facts.sha256, "key": entity.key, "role": entity.role, "aliases": list(entity.aliases)}
            )
        for rel in facts.relationships:
            if not RELATION_PATTERN.fullmatch(rel.type):
                raise MembraneError(f"relationship type {rel.type!r} is outside the allowed alphabet")
            row = self.relationships.setdefault(
                (rel.source_key, rel.type, rel.target_key),
                {"source": rel.source_key, "type": rel.type, "target": rel.target_key, "sources": [],
                 "first_seen": at, "last_seen": at, "model": facts.model},
            )
            row["sources"] = sorted(set(row["sources"]) | {facts.sha256})
            row["first_seen"] = min(row["first_seen"], at)
            # The newest source names the model (ties: the greater name), as in the graph.
            if (at, facts.model) >= (row["last_seen"], row["model"]):
                row["last_seen"], row["model"] = at, facts.model


def collect(settings: Settings, journal: Journal) -> ExportedGraph:
    """Every capture with current facts, resolved and merged, oldest first."""
    from membrane.resolve import capture_facts

    graph = ExportedGraph()
    for record, stored in journal.facts():
        graph.add(capture_facts(record, stored.result, settings, known_keys=lambda: list(graph.entities)))
    return graph


# ---------------------------------------------------------------- JSON Lines


def jsonl_records(graph: ExportedGraph) -> Iterator[dict[str, Any]]:
    for capture in graph.captures:
        yield {"kind": "capture", **capture}
    for entity in graph.entities.values():
        yield {"kind": "entity", **entity}
    for mention in graph.mentions:
        yield {"kind": "mention", **mention}
    for rel in graph.relationships.values():
        yield {"kind": "relationship", **rel}


def write_jsonl(graph: ExportedGraph, out: TextIO) -> int:
    count = 0
    for record in jsonl_records(graph):
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        count += 1
    return count


# ---------------------------------------------------------------- Cypher

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
    """A Cypher literal for a str, int, float, bool, None or list of them."""
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


_CAPTURES = (
    "UNWIND $captures AS row MERGE (c:Capture {sha256: row.sha256}) "
    "SET c.path = row.path, c.ingested_at = datetime(row.ingested_at), c.model = row.model, "
    "c.prompt_version = row.prompt_version;"
)
_ENTITIES = (
    "UNWIND $entities AS row MERGE (e:Entity {key: row.key}) "
    "SET e.name = row.name, e.aliases = row.aliases, e.first_seen = datetime(row.first_seen), "
    "e.last_seen = datetime(row.last_seen);"
)
_MENTIONS = (
    "UNWIND $mentions AS row MATCH (c:Capture {sha256: row.sha256}) MATCH (e:Entity {key: row.key}) "
    "MERGE (c)-[m:MENTIONS]->(e) SET m.role = row.role, m.aliases = row.aliases;"
)
# {type} is placed only after RELATION_PATTERN matched it.
_RELATIONSHIPS = (
    "UNWIND $rows AS row MATCH (s:Entity {{key: row.source}}) MATCH (o:Entity {{key: row.target}}) "
    "MERGE (s)-[r:`{type}`]->(o) SET r.sources = row.sources, r.first_seen = datetime(row.first_seen), "
    "r.last_seen = datetime(row.last_seen), r.model = row.model;"
)


def cypher_statements(graph: ExportedGraph) -> Iterator[str]:
    """`:param` lines holding the data as escaped literals, each followed by a
    statement reading it; the graph model is graph.py's (timestamps as DATETIME)."""
    batches: list[tuple[str, str, list[dict[str, Any]]]] = [
        ("captures", _CAPTURES, graph.captures),
        ("entities", _ENTITIES, list(graph.entities.values())),
        ("mentions", _MENTIONS, graph.mentions),
    ]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for rel in graph.relationships.values():
        by_type.setdefault(rel["type"], []).append({k: v for k, v in rel.items() if k != "type"})
    for rel_type, rows in sorted(by_type.items()):
        if not RELATION_PATTERN.fullmatch(rel_type):
            raise MembraneError(f"relationship type {rel_type!r} is outside the allowed alphabet")
        batches.append(("rows", _RELATIONSHIPS.format(type=rel_type), rows))
    for name, statement, rows in batches:
        if rows:
            yield f":param {name} => {cypher_literal(rows)}"
            yield statement


def write_cypher(graph: ExportedGraph, out: TextIO) -> int:
    count = 0
    for statement in cypher_statements(graph):
        out.write(statement + "\n")
        count += 1
    return count


def export(settings: Settings, journal: Journal, fmt: Format, out: TextIO) -> int:
    """Write the journal's graph to `out` in `fmt`; returns the number of lines written."""
    graph = collect(settings, journal)
    writer = write_cypher if fmt == "cypher" else write_jsonl
    return writer(graph, out)

