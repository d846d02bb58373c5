"""The parameters the store sends to Neo4j, built from resolve's and merge's
typed values: one batch's rows for cypher.WRITE_BATCH and
cypher.MERGE_CAPTURES, a capture's mentions, its fingerprint, and how
captures are cut into batches.

Times travel as integer microseconds since the epoch: cheaper to send than
datetime values and cheaper for the server to read than ISO strings. A time
before 1970 arrives in whole seconds (resolve.note_moment): the server builds
a DATETIME from seconds and a nanosecond that may not be negative.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from membrane.merge import MergedEntity, MergedRelationship, merge_facts
from membrane.resolve import CaptureFacts

__all__ = ["batches", "fingerprint", "mention_rows", "write_rows"]

Row = dict[str, Any]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def write_rows(batch: Sequence[CaptureFacts], fingerprints: dict[str, str]) -> dict[str, list[Row]]:
    """Parameters for one batch, merged by merge.merge_facts so each key is
    written once; entities sorted by key, so writers lock in one order."""
    merged = merge_facts(batch)
    return {
        "captures": [_capture_row(c, fingerprints[c.sha256]) for c in sorted(batch, key=lambda c: c.sha256)],
        "entities": [_entity_row(e) for e in merged.entities],
        "relationships": [_relationship_row(r) for r in merged.relationships],
    }


def mention_rows(capture: CaptureFacts | None) -> list[Row]:
    """The MENTIONS a capture holds (none for None), as the store compares and writes them."""
    if capture is None:
        return []
    return [{"key": e.key, "role": e.role, "aliases": list(e.aliases)} for e in capture.entities]


def _capture_row(c: CaptureFacts, fingerprint: str) -> Row:
    return {
        "sha256": c.sha256,
        "path": c.path,
        "ingested_at": _moment(c.ingested_at),
        "model": c.model,
        "prompt_version": c.prompt_version,
        "fingerprint": fingerprint,
        "mentions": mention_rows(c),
        "title": c.title,
        "captured_at": c.captured_at,
        "captured_utc": _moment(c.captured_utc),
        "text": c.text,
        "tags": list(c.tags),
    }


def _entity_row(e: MergedEntity) -> Row:
    return {
        "key": e.key,
        "name": e.name,
        "aliases": list(e.aliases),
        "first_seen": _moment(e.first_seen),
        "last_seen": _moment(e.last_seen),
    }


def _relationship_row(r: MergedRelationship) -> Row:
    return {
        "source": r.source_key,
        "type": r.type,
        "target": r.target_key,
        "sources": list(r.sources),
        "first_seen": _moment(r.first_seen),
        "last_seen": _moment(r.last_seen),
        "model": r.model,
    }


@lru_cache(maxsize=4096)
def _moment(timestamp: str) -> int:
    moment = datetime.fromisoformat(timestamp)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def fingerprint(facts: CaptureFacts) -> str:
    """A digest of everything a capture contributes; stored on its node so an
    unchanged re-ingest is recognised with one lookup and writes nothing."""
    text = hashlib.sha256(facts.text.encode("utf-8")).hexdigest() if facts.text is not None else None
    payload = [
        facts.sha256,
        facts.path,
        facts.ingested_at,
        facts.captured_utc,
        facts.model,
        facts.prompt_version,
        list(facts.tags),
        [[e.key, e.name, e.role, e.aliases] for e in facts.entities],
        [[r.source_key, r.type, r.target_key] for r in facts.relationships],
        [facts.title, facts.captured_at, text],
    ]
    return hashlib.sha256(json.dumps(payload, ensure_ascii=False).encode("utf-8")).hexdigest()


def batches(captures: Iterable[CaptureFacts], max_rows: int) -> Iterator[list[CaptureFacts]]:
    """Captures in the order given, cut so a batch holds at most `max_rows` rows
    (a capture, its entities and relationships), or one capture that alone is larger."""
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
