"""The graph written out from the journal alone: JSON Lines or a Cypher script.

Owns `membrane export`: which captures count (every capture whose facts are
current: extracted, projected, done, as journal.facts() joins them with their
latest extraction), resolving them exactly as the projection does
(resolve.Resolver), and the two file formats. The merge is merge.merge_facts,
the one the graph writer uses: one Entity per key, one typed relationship per
(source, type, target) with the sha256 of every capture that supports it. No
Neo4j is needed (the embedded default).

JSONL: one object per line, ``{"kind": "capture"|"entity"|"mention"|"relationship", ...}``.

Cypher: graph.cypher_statements writes the script (all Cypher lives in
graph.py): for cypher-shell or Neo4j Browser, a ``:param name => [...]`` line
holding the data, then a MERGE statement reading it as $name. Running the
script twice changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, TextIO

from membrane.graph import cypher_statements
from membrane.journal import Journal
from membrane.merge import MergedGraph, merge_facts

if TYPE_CHECKING:
    from membrane.config import Settings
    from membrane.resolve import CaptureFacts

__all__ = ["collect", "export", "jsonl_records", "write_cypher", "write_jsonl"]

Format = Literal["cypher", "jsonl"]


def collect(settings: Settings, journal: Journal) -> MergedGraph:
    """Every capture with current facts, resolved and merged. One journal read
    (journal.facts() joins each capture with its latest extraction); fuzzy
    matching sees the keys of the captures resolved before, oldest first."""
    from membrane.resolve import capture_facts

    known: dict[str, None] = {}
    resolved: list[CaptureFacts] = []
    for record, stored in journal.facts():
        facts = capture_facts(record, stored.result, settings, known_keys=lambda: list(known))
        known.update(dict.fromkeys(e.key for e in facts.entities))
        resolved.append(facts)
    return merge_facts(resolved)


# ---------------------------------------------------------------- JSON Lines


def jsonl_records(graph: MergedGraph) -> Iterator[dict[str, Any]]:
    for kind, rows in (("capture", graph.capture_rows()), ("entity", graph.entity_rows()),
                       ("mention", graph.mention_rows()), ("relationship", graph.relationship_rows())):  # fmt: skip
        for row in rows:
            yield {"kind": kind, **row}


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
