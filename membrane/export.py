"""The graph written out from the journal alone: JSON Lines or a Cypher script.

Owns `membrane export`: which captures count (every capture whose facts are
current: extracted, projected, done, as journal.extractions.facts() joins them
with their latest extraction), resolving them exactly as the projection does
(resolve.Resolver), and the two file formats. The merge is merge.merge_facts,
the one the graph writer uses: one Entity per key, one typed relationship per
(source, type, target) with the sha256 of every capture that supports it. No
Neo4j is needed (the embedded default).

JSONL: one object per line, ``{"kind": "capture"|"entity"|"mention"|"relationship", ...}``.

Cypher: cypher_statements writes the script, for cypher-shell or Neo4j
Browser: a ``:param name => [...]`` line holding the data, then a MERGE
statement reading it as $name. Running the script twice changes nothing. The
statements, literals and relationship types come from graph/cypher.py (all
Cypher text lives there); the rows are the JSONL records' rows.

Both formats build their rows here from merge's typed values, timestamps as
resolve.normalize_timestamp's strings.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, TextIO

from membrane.graph import cypher
from membrane.journal import Journal
from membrane.merge import MergedGraph, merge_facts

if TYPE_CHECKING:
    from membrane.config import Settings
    from membrane.resolve import CaptureFacts

__all__ = ["collect", "cypher_statements", "export", "jsonl_records", "write_cypher", "write_jsonl"]

Format = Literal["cypher", "jsonl"]
Row = dict[str, Any]


def collect(settings: Settings, journal: Journal) -> MergedGraph:
    """Every capture with current facts, resolved and merged. One journal read
    (journal.extractions.facts() joins each capture with its latest
    extraction); fuzzy matching sees the keys of the captures resolved before,
    oldest first."""
    from membrane.resolve import capture_facts

    known: dict[str, None] = {}
    resolved: list[CaptureFacts] = []
    for record, stored in journal.extractions.facts():
        facts = capture_facts(record, stored.result, settings, known_keys=lambda: list(known))
        known.update(dict.fromkeys(e.key for e in facts.entities))
        resolved.append(facts)
    return merge_facts(resolved)


# ---------------------------------------------------------------- rows


def _rows(graph: MergedGraph) -> dict[str, list[Row]]:
    """The graph's rows by kind, in JSONL's order, each as the graph holds it:
    a capture's own properties, an entity, one (capture, entity) mention, a
    relationship with its support."""
    return {
        "capture": [
            {
                "sha256": c.sha256,
                "path": c.path,
                "ingested_at": c.ingested_at,
                "model": c.model,
                "prompt_version": c.prompt_version,
                "title": c.title,
                "captured_at": c.captured_at,
                "captured_utc": c.captured_utc,
                "tags": list(c.tags),
                "text": c.text,
            }
            for c in graph.captures
        ],
        "entity": [
            {
                "key": e.key,
                "name": e.name,
                "aliases": list(e.aliases),
                "first_seen": e.first_seen,
                "last_seen": e.last_seen,
            }
            for e in graph.entities
        ],
        "mention": [
            {"sha256": c.sha256, "key": e.key, "role": e.role, "aliases": list(e.aliases)}
            for c in graph.captures
            for e in c.entities
        ],
        "relationship": [
            {
                "source": r.source_key,
                "type": r.type,
                "target": r.target_key,
                "sources": list(r.sources),
                "first_seen": r.first_seen,
                "last_seen": r.last_seen,
                "model": r.model,
            }
            for r in graph.relationships
        ],
    }


# ---------------------------------------------------------------- JSON Lines


def jsonl_records(graph: MergedGraph) -> Iterator[Row]:
    for kind, rows in _rows(graph).items():
        for row in rows:
            yield {"kind": kind, **row}


# ---------------------------------------------------------------- a Cypher script


def cypher_statements(graph: MergedGraph) -> Iterator[str]:
    """The graph as a script for cypher-shell or Neo4j Browser: `:param` lines
    holding the data as escaped literals, each followed by a statement reading
    it; the graph model is the store's (timestamps as DATETIME), and running it
    twice changes nothing. Every relationship type is checked before the first line."""
    rows = _rows(graph)
    batches: list[tuple[str, str, list[Row]]] = [
        ("captures", cypher.SCRIPT_CAPTURES, rows["capture"]),
        ("entities", cypher.SCRIPT_ENTITIES, rows["entity"]),
        ("mentions", cypher.SCRIPT_MENTIONS, rows["mention"]),
    ]
    by_type: dict[str, list[Row]] = {}
    for rel in rows["relationship"]:
        by_type.setdefault(rel.pop("type"), []).append(rel)
    for rel_type, typed in sorted(by_type.items()):
        batches.append(("rows", cypher.script_relationships(rel_type), typed))
    for name, statement, batch in batches:
        if batch:
            yield cypher.param_line(name, batch)
            yield statement


# ---------------------------------------------------------------- writing


def write_jsonl(graph: MergedGraph, out: TextIO) -> int:
    return _write_lines((json.dumps(record, ensure_ascii=False) for record in jsonl_records(graph)), out)


def write_cypher(graph: MergedGraph, out: TextIO) -> int:
    return _write_lines(cypher_statements(graph), out)


def _write_lines(lines: Iterator[str], out: TextIO) -> int:
    count = 0
    for line in lines:
        out.write(line + "\n")
        count += 1
    return count


def export(settings: Settings, journal: Journal, fmt: Format, out: TextIO) -> int:
    """Write the journal's graph to `out` in `fmt`; returns the number of lines written."""
    graph = collect(settings, journal)
    writer = write_cypher if fmt == "cypher" else write_jsonl
    return writer(graph, out)
