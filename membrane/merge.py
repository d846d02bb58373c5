"""The graph's merge rule: how the facts of several captures become one graph.

Owns, in one pure function (no driver, no Cypher), the typed values that
every writer builds its own rows from (the store per batch, export for the
whole journal) and that the journal reader of explore.py reports on:

- one entity per key; its aliases are the union of every capture's surface
  forms (sorted), its name the first capture's (in merge order), its
  first_seen/last_seen the min/max of the captured_utc (the notes' own dates)
  of the captures that mention it;
- one relationship per (source, type, target); its sources are the sha256 of
  every capture that states it (sorted), first_seen/last_seen the min/max of
  their captured_utc, and its model that of the newest source by that date
  (ties: the greater model name).

Merge order is (ingested_at, sha256), so the result does not depend on the
order the captures arrive in, and the display name is the first ingested
capture's, as in a graph written capture by capture. Timestamps are
resolve.normalize_timestamp's strings, whose string order is time order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from membrane.resolve import CaptureFacts, ResolvedRelationship

__all__ = ["EntityName", "MergedEntity", "MergedGraph", "MergedRelationship", "merge_facts"]


@dataclass(frozen=True)
class EntityName:
    """How an entity is called: its key, its display name and every surface form."""

    key: str
    name: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class MergedEntity(EntityName):
    """An entity across captures: every surface form, and when it was first and last mentioned."""

    first_seen: str
    last_seen: str


@dataclass(frozen=True)
class MergedRelationship(ResolvedRelationship):
    """A relationship with its support: the captures stating it (sha256), the
    first and last of their own dates, and the model of the newest."""

    sources: tuple[str, ...]
    first_seen: str
    last_seen: str
    model: str


@dataclass(frozen=True)
class MergedGraph:
    """Captures in merge order, entities by key, relationships by (source, type, target)."""

    captures: tuple[CaptureFacts, ...]
    entities: tuple[MergedEntity, ...]
    relationships: tuple[MergedRelationship, ...]


def merge_facts(captures: Iterable[CaptureFacts]) -> MergedGraph:
    """The graph several captures make together (see the module docstring);
    a capture given twice counts once, the last one given."""
    ordered = sorted({c.sha256: c for c in captures}.values(), key=lambda c: (c.ingested_at, c.sha256))
    entities: dict[str, MergedEntity] = {}
    facts: dict[tuple[str, str, str], MergedRelationship] = {}
    for capture in ordered:
        for entity in capture.entities:
            entities[entity.key] = _seen_entity(
                entities.get(entity.key), entity.key, entity.name, entity.aliases, capture.captured_utc
            )
        for rel in capture.relationships:
            triple = (rel.source_key, rel.type, rel.target_key)
            facts[triple] = _seen_relationship(facts.get(triple), triple, capture)
    return MergedGraph(
        captures=tuple(ordered),
        entities=tuple(entity for _, entity in sorted(entities.items())),
        relationships=tuple(fact for _, fact in sorted(facts.items())),
    )


def _seen_entity(known: MergedEntity | None, key: str, name: str, aliases: tuple[str, ...], at: str) -> MergedEntity:
    if known is None:
        return MergedEntity(key, name, tuple(sorted(set(aliases))), at, at)
    return MergedEntity(
        key,
        known.name,
        tuple(sorted(set(known.aliases) | set(aliases))),
        min(known.first_seen, at),
        max(known.last_seen, at),
    )


def _seen_relationship(
    known: MergedRelationship | None, triple: tuple[str, str, str], capture: CaptureFacts
) -> MergedRelationship:
    at, model = capture.captured_utc, capture.model
    if known is None:
        return MergedRelationship(*triple, (capture.sha256,), at, at, model)
    sources = tuple(sorted(set(known.sources) | {capture.sha256}))
    # The newest source names the model; on equal times, the greater model name.
    newest = max((known.last_seen, known.model), (at, model))
    return MergedRelationship(*triple, sources, min(known.first_seen, at), *newest)
