"""What MemBrane knows, as a person asks it: `membrane show NAME` (an entity)
and `membrane facts PATH|SHA256` (one capture); and, for assistants (`membrane
mcp`), what changed recently, the path between two entities, and the most
connected entities.

Owns the two reports (EntityReport, CaptureReport), how a typed name finds an
entity, how a typed target finds a capture (`find_capture`, which `membrane
forget` uses too), and the two stores they are read from:

- Neo4j, through the saved questions `entity` and `capture`
  (graph/questions.py: the same Cypher people run as Neo4j Browser
  favourites), whose rows are read into merge's typed values here;
- the journal alone, through export.collect (the graph as `membrane export`
  and `membrane sync` build it, merge's typed values).

Both give the same reports for the same captures, because every list is
sorted here, never by a store (a path is the shortest one whose entity keys,
then relationship types, come first in string order): facts by (direction, type, other entity's key),
captures by (captured_utc, sha256), aliases as stored (sorted). Dates print as
the notes write them (`captured_at`); a first or last seen prints as the note
that dated it writes it (see `as_written`). What can differ
is only what each store holds: Neo4j has what was projected (captures still
waiting for it show in `membrane status` as projection lag).

A name is resolved the way ingestion resolves it (resolve.entity_key, then an
alias, then fuzzy matching when graph.fuzzy_threshold > 0); a name that fits
no entity, or several, raises NotFound with close candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from rapidfuzz import fuzz, process

from membrane.capture import capture_path
from membrane.errors import NotFound
from membrane.journal import FACT_STATES
from membrane.merge import EntityName, MergedEntity, MergedRelationship

# A capture as provenance, an entity as one capture names it (key, name, role,
# surface forms), a relationship by its keys: resolve's own records of them.
from membrane.resolve import CaptureSource as Source
from membrane.resolve import ResolvedEntity as Mention
from membrane.resolve import ResolvedRelationship, entity_key, normalize_timestamp

if TYPE_CHECKING:
    from membrane.config import InboxSettings, Settings
    from membrane.graph.store import GraphStore
    from membrane.journal import CaptureRecord, Journal
    from membrane.merge import MergedGraph
    from membrane.resolve import CaptureFacts

__all__ = [
    "Candidate",
    "CaptureFact",
    "CaptureReport",
    "EntityName",
    "EntityReport",
    "Fact",
    "GraphReader",
    "Hub",
    "JournalReader",
    "Mention",
    "PathStep",
    "Reader",
    "RecentCapture",
    "Source",
    "as_written",
    "capture_lines",
    "close_candidates",
    "entity_lines",
    "find_capture",
    "find_entity",
    "open_reader",
    "resolve_name",
]

# Unknown names: how many close candidates to offer, and how close they must be.
CANDIDATES = 5
CANDIDATE_CUTOFF = 70.0
# The longest path looked for, in relationships (cypher.SHORTEST_PATHS and the saved question hold it too).
MAX_PATH_HOPS = 8

Direction = Literal["out", "in"]
_DIRECTIONS: tuple[Direction, ...] = ("out", "in")


@dataclass(frozen=True)
class Fact:
    """One relationship of an entity; `direction` "out" when the entity is its source."""

    direction: Direction
    type: str
    other_key: str
    other_name: str
    first_seen: str
    last_seen: str
    model: str
    sources: tuple[Source, ...]


# Built from store rows by keyword only: the fields are many and alike.
@dataclass(frozen=True, kw_only=True)
class EntityReport(MergedEntity):
    """An entity as merged across captures, with the captures that mention it and its facts."""

    mentioned_in: tuple[Source, ...]
    facts: tuple[Fact, ...]


@dataclass(frozen=True)
class CaptureFact(ResolvedRelationship):
    """A relationship the capture supports, with its ends' names; `other_sources`:
    how many other captures support it too."""

    source_name: str
    target_name: str
    other_sources: int


# Built from store rows by keyword only: the fields are many and alike.
@dataclass(frozen=True, kw_only=True)
class CaptureReport(Source):
    """One capture: where it came from, what it names and which facts it supports."""

    prompt_version: str
    entities: tuple[Mention, ...]
    facts: tuple[CaptureFact, ...]


@dataclass(frozen=True)
class Candidate:
    """An entity a typed name may have meant, and how close it came (a rapidfuzz score, 0-100)."""

    entity: EntityName
    score: float


@dataclass(frozen=True)
class RecentCapture:
    """A capture ingested recently and the entities it names (by key)."""

    capture: Source
    entities: tuple[EntityName, ...]


@dataclass(frozen=True)
class PathStep:
    """One relationship on a path, walked from `source` to `target`; `direction`
    "out" when the relationship points that way, "in" when against it."""

    source: EntityName
    type: str
    direction: Direction
    target: EntityName


@dataclass(frozen=True)
class Hub:
    """An entity and how many relationships (to other entities) it takes part in."""

    entity: EntityName
    facts: int


class Reader(Protocol):
    """A store the reports are read from."""

    def entity_names(self) -> list[EntityName]: ...

    def entity(self, key: str) -> EntityReport | None: ...

    def capture(self, sha256: str) -> CaptureReport | None: ...

    def recent(self, since: str, limit: int) -> list[RecentCapture]:
        """Captures ingested at or after `since` (an ISO-8601 UTC stamp), newest first."""
        ...

    def path(self, from_key: str, to_key: str) -> list[PathStep] | None:
        """The shortest path through relationships (see the module docstring); None if there is none."""
        ...

    def hubs(self, limit: int) -> list[Hub]:
        """The entities with the most relationships, then by key."""
        ...


# ---------------------------------------------------------------- resolving a name


def find_entity(reader: Reader, name: str, fuzzy_threshold: float) -> EntityReport:
    """The report on the entity `name` means (see resolve_name); every entity's
    names are read only when the name's key is not one (in Neo4j, one query
    fewer and no full read for the common case)."""
    report = reader.entity(entity_key(name))
    if report is not None:
        return report
    entity = resolve_name(name, reader.entity_names(), fuzzy_threshold)
    report = reader.entity(entity.key)
    if report is None:  # removed between the two reads
        raise NotFound(f"the entity {entity.key!r} is no longer there")
    return report


def resolve_name(name: str, entities: Sequence[EntityName], fuzzy_threshold: float) -> EntityName:
    """The entity `name` means: its key, else an alias, else (fuzzy_threshold > 0)
    the best fuzzy key as ingestion would pick it; NotFound otherwise or on a tie."""
    key = entity_key(name)
    by_key = {e.key: e for e in entities}
    if key in by_key:
        return by_key[key]
    aliased = [e for e in entities if name in e.aliases or key in map(entity_key, e.aliases)]
    if len(aliased) == 1:
        return aliased[0]
    if aliased:
        raise _ambiguous(name, [Candidate(e, 100.0) for e in aliased])
    if fuzzy_threshold > 0:
        matches = process.extract(key, sorted(by_key), scorer=fuzz.ratio, score_cutoff=fuzzy_threshold, limit=2)
        if len(matches) == 2 and matches[0][1] == matches[1][1]:
            raise _ambiguous(name, [Candidate(by_key[m[0]], m[1]) for m in matches])
        if matches:
            return by_key[matches[0][0]]
    raise NotFound(
        f"no entity is called {name!r} (key {key!r})",
        candidates=tuple(_describe(c) for c in close_candidates(key, entities)),
        hint="Names are matched by key (case, punctuation and a leading article do not count) and by alias.",
    )


def close_candidates(key: str, entities: Sequence[EntityName]) -> list[Candidate]:
    """Entities whose key or an alias's key is close to `key`, best first."""
    choices: dict[str, str] = {}
    for entity in entities:
        for form in (entity.key, *map(entity_key, entity.aliases)):
            choices.setdefault(form, entity.key)
    best: dict[str, float] = {}
    for form, score, _ in process.extract(
        key, list(choices), scorer=fuzz.WRatio, score_cutoff=CANDIDATE_CUTOFF, limit=None
    ):
        best[choices[form]] = max(best.get(choices[form], 0.0), score)
    by_key = {e.key: e for e in entities}
    ranked = sorted(best.items(), key=lambda item: (-item[1], item[0]))[:CANDIDATES]
    return [Candidate(by_key[k], round(score, 1)) for k, score in ranked]


def _ambiguous(name: str, candidates: list[Candidate]) -> NotFound:
    return NotFound(
        f"{name!r} fits {len(candidates)} entities",
        candidates=tuple(_describe(c) for c in sorted(candidates, key=lambda c: c.entity.key)),
        hint="Ask again with one of these names (or its key).",
    )


def _describe(candidate: Candidate) -> str:
    return f"{candidate.entity.name} (key {candidate.entity.key!r}, score {candidate.score:g})"


# ---------------------------------------------------------------- naming a capture

_HEX = frozenset("0123456789abcdef")


def find_capture(journal: Journal, inbox: InboxSettings, target: str, *, prefix: bool = False) -> CaptureRecord | None:
    """The capture holding facts that `target` names: its sha256, or its file as first seen in
    the inbox or as moved to processed/; with `prefix`, first a sha256 prefix of 8 to 63 hex
    digits (as `show` prints 12) that exactly one such capture has. None when none fits."""
    return (_capture_by_prefix(journal, target) if prefix else None) or _capture_named(journal, inbox, target)


def _capture_by_prefix(journal: Journal, target: str) -> CaptureRecord | None:
    prefix = target.lower()
    if not 8 <= len(prefix) < 64 or not _HEX.issuperset(prefix):
        return None
    matches = [r for r in journal.captures.in_states(FACT_STATES) if r.sha256.startswith(prefix)]
    return matches[0] if len(matches) == 1 else None


def _capture_named(journal: Journal, inbox: InboxSettings, target: str) -> CaptureRecord | None:
    if len(target) == 64 and _HEX.issuperset(target.lower()):
        record = journal.captures.get(target.lower())
        return record if record is not None and record.state in FACT_STATES else None
    path = Path(target)
    candidates = [capture_path(path, inbox.path)]
    try:
        candidates.append(path.resolve().relative_to(inbox.processed.resolve()).as_posix())
    except ValueError:
        pass
    for candidate in candidates:
        record = journal.captures.last_for_path(candidate)
        if record is not None:
            return record
    return None


# ---------------------------------------------------------------- building reports


def _sources(sources: Iterable[Source]) -> tuple[Source, ...]:
    unique = {s.sha256: s for s in sources}
    return tuple(sorted(unique.values(), key=lambda s: (s.captured_utc, s.sha256)))


def as_written(stamp: str, sources: Sequence[Source]) -> str:
    """A first or last seen (a normalised stamp) as the note that set it writes its
    date: the `date` of the first of `sources` (in report order) dated that moment."""
    return next((s.captured_at for s in sources if s.captured_utc == stamp), stamp)


def _entity_report(entity: MergedEntity, mentioned_in: Iterable[Source], facts: Iterable[Fact]) -> EntityReport:
    return EntityReport(
        key=entity.key,
        name=entity.name,
        aliases=entity.aliases,
        first_seen=entity.first_seen,
        last_seen=entity.last_seen,
        mentioned_in=_sources(mentioned_in),
        facts=tuple(sorted(facts, key=lambda f: (f.direction != "out", f.type, f.other_key))),
    )


def _ends(rel: ResolvedRelationship, direction: Direction) -> tuple[str, str]:
    """(near, far): the key of the entity `rel` is seen from, then the other one's."""
    return (rel.source_key, rel.target_key) if direction == "out" else (rel.target_key, rel.source_key)


def _fact(rel: MergedRelationship, direction: Direction, other_name: str, sources: Iterable[Source]) -> Fact:
    """`rel` as seen from its source entity ("out") or its target ("in")."""
    return Fact(
        direction,
        rel.type,
        _ends(rel, direction)[1],
        other_name,
        rel.first_seen,
        rel.last_seen,
        rel.model,
        _sources(sources),
    )


def _capture_report(
    source: Source, prompt_version: str, mentions: Iterable[Mention], facts: Iterable[CaptureFact]
) -> CaptureReport:
    return CaptureReport(
        sha256=source.sha256,
        path=source.path,
        ingested_at=source.ingested_at,
        captured_at=source.captured_at,
        captured_utc=source.captured_utc,
        model=source.model,
        prompt_version=prompt_version,
        entities=tuple(sorted({m.key: m for m in mentions}.values(), key=lambda m: m.key)),
        facts=tuple(sorted(set(facts), key=lambda f: (f.source_key, f.type, f.target_key))),
    )


def _recent(captures: Iterable[RecentCapture], limit: int) -> list[RecentCapture]:
    ordered = sorted(captures, key=lambda r: (r.capture.ingested_at, r.capture.sha256), reverse=True)[:limit]
    return [RecentCapture(r.capture, tuple(sorted(r.entities, key=lambda e: e.key))) for r in ordered]


def _hubs(counts: Iterable[tuple[EntityName, int]], limit: int) -> list[Hub]:
    ranked = sorted(counts, key=lambda item: (-item[1], item[0].key))[:limit]
    return [Hub(entity, facts) for entity, facts in ranked if facts > 0]


Hop = tuple[str, str, Direction]  # the next entity's key, the relationship type, its direction


def _best_path(
    paths: Iterable[tuple[list[str], list[tuple[str, Direction]]]],
) -> tuple[list[str], list[tuple[str, Direction]]] | None:
    """The path whose keys, then (type, direction) pairs, come first; "out" before "in"."""
    return min(paths, key=lambda p: (p[0], [(t, d != "out") for t, d in p[1]]), default=None)


def _steps(keys: list[str], hops: list[tuple[str, Direction]], names: dict[str, EntityName]) -> list[PathStep]:
    return [PathStep(names[a], t, d, names[b]) for a, b, (t, d) in zip(keys[:-1], keys[1:], hops, strict=True)]


# ---------------------------------------------------------------- the two stores


def _source(node: dict[str, Any]) -> Source:
    # A capture written before captures had dates is dated by its ingestion until `membrane sync`.
    captured_utc = node.get("captured_utc") or node["ingested_at"]
    return Source(
        node["sha256"],
        node["path"],
        node["ingested_at"],
        node["model"],
        captured_at=node.get("captured_at") or captured_utc,
        captured_utc=captured_utc,
    )


def _entity_name(node: dict[str, Any]) -> EntityName:
    return EntityName(node["key"], node["name"], tuple(node.get("aliases") or ()))


def _merged_entity(node: dict[str, Any]) -> MergedEntity:
    return MergedEntity(node["key"], node["name"], tuple(node["aliases"]), node["first_seen"], node["last_seen"])


def _merged_relationship(rel: dict[str, Any]) -> MergedRelationship:
    return MergedRelationship(
        rel["start"]["key"],
        rel["type"],
        rel["end"]["key"],
        tuple(rel["sources"]),
        rel["first_seen"],
        rel["last_seen"],
        rel["model"],
    )


class GraphReader:
    """Reports from Neo4j, through the saved questions `entity` and `capture`;
    their rows (property dicts) are read into typed values first."""

    def __init__(self, graph: GraphStore) -> None:
        self._graph = graph

    def entity_names(self) -> list[EntityName]:
        return [EntityName(r["key"], r["name"], tuple(r["aliases"])) for r in self._graph.entity_names()]

    def entity(self, key: str) -> EntityReport | None:
        rows = self._graph.ask("entity", key=key)
        if not rows:
            return None
        row = rows[0]
        facts = []
        for item in row["facts"]:
            rel = _merged_relationship(item["fact"])
            direction: Direction = "out" if rel.source_key == key else "in"
            facts.append(_fact(rel, direction, item["other"]["name"], map(_source, item["sources"])))
        return _entity_report(_merged_entity(row["entity"]), map(_source, row["mentioned_in"]), facts)

    def capture(self, sha256: str) -> CaptureReport | None:
        rows = self._graph.ask("capture", sha256=sha256)
        if not rows:
            return None
        mentions = [
            Mention(
                row["entity"]["key"], row["entity"]["name"], row["mention"]["role"], tuple(row["mention"]["aliases"])
            )
            for row in rows
            if row["entity"] is not None
        ]
        facts = [
            CaptureFact(
                row["entity"]["key"],
                row["fact"]["type"],
                row["target"]["key"],
                row["entity"]["name"],
                row["target"]["name"],
                len(row["fact"]["sources"]) - 1,
            )
            for row in rows
            if row["fact"] is not None
        ]
        capture = rows[0]["capture"]
        return _capture_report(_source(capture), capture["prompt_version"], mentions, facts)

    def recent(self, since: str, limit: int) -> list[RecentCapture]:
        rows = self._graph.ask("recent", since=datetime.fromisoformat(since), limit=limit)
        return _recent(
            (
                RecentCapture(_source(r["capture"]), tuple(map(_entity_name, r["entities"])))
                for r in rows
                if r["capture"].get("sha256")
            ),
            limit,
        )

    def path(self, from_key: str, to_key: str) -> list[PathStep] | None:
        names: dict[str, EntityName] = {}
        paths = []
        for row in self._graph.shortest_paths(from_key, to_key):
            nodes = [_entity_name(n) for n in row["path"]["nodes"]]
            names.update((n.key, n) for n in nodes)
            keys = [n.key for n in nodes]
            hops: list[tuple[str, Direction]] = [
                (rel["type"], "out" if rel["start"]["key"] == a else "in")
                for a, rel in zip(keys, row["path"]["relationships"], strict=False)
            ]
            paths.append((keys, hops))
        best = _best_path(paths)
        return None if best is None else _steps(*best, names)

    def hubs(self, limit: int) -> list[Hub]:
        return _hubs(
            (
                (_entity_name(r["entity"]), int(r["facts"]))
                for r in self._graph.ask("hubs", limit=limit)
                if r["entity"].get("key")
            ),
            limit,
        )


class JournalReader:
    """Reports from the journal alone: the graph export.collect builds, merged as Neo4j merges it."""

    def __init__(self, graph: MergedGraph) -> None:
        self._captures: dict[str, CaptureFacts] = {c.sha256: c for c in graph.captures}
        self._sources = {
            sha: Source(
                c.sha256, c.path, c.ingested_at, c.model, captured_at=c.captured_at, captured_utc=c.captured_utc
            )
            for sha, c in self._captures.items()
        }
        self._entities = {e.key: e for e in graph.entities}
        self._relationships = graph.relationships

    @classmethod
    def from_journal(cls, settings: Settings, journal: Journal) -> JournalReader:
        from membrane.export import collect

        return cls(collect(settings, journal))

    def entity_names(self) -> list[EntityName]:
        return list(self._entities.values())

    def entity(self, key: str) -> EntityReport | None:
        entity = self._entities.get(key)
        if entity is None:
            return None
        mentioned = [self._sources[sha] for sha, c in self._captures.items() if any(e.key == key for e in c.entities)]
        facts = [
            _fact(
                rel,
                direction,
                self._entities[_ends(rel, direction)[1]].name,
                [self._sources[sha] for sha in rel.sources],
            )
            for rel in self._relationships
            for direction in _DIRECTIONS
            if _ends(rel, direction)[0] == key
        ]
        return _entity_report(entity, mentioned, facts)

    def capture(self, sha256: str) -> CaptureReport | None:
        capture = self._captures.get(sha256)
        if capture is None:
            return None
        names = {key: entity.name for key, entity in self._entities.items()}
        mentions = [Mention(e.key, names[e.key], e.role, e.aliases) for e in capture.entities]
        facts = [
            CaptureFact(
                r.source_key, r.type, r.target_key, names[r.source_key], names[r.target_key], len(r.sources) - 1
            )
            for r in self._relationships
            if sha256 in r.sources
        ]
        return _capture_report(self._sources[sha256], capture.prompt_version, mentions, facts)

    def _name(self, key: str) -> EntityName:
        entity = self._entities[key]
        return EntityName(entity.key, entity.name, entity.aliases)

    def recent(self, since: str, limit: int) -> list[RecentCapture]:
        since = normalize_timestamp(since)
        return _recent(
            (
                RecentCapture(self._sources[c.sha256], tuple(self._name(e.key) for e in c.entities))
                for c in self._captures.values()
                if c.ingested_at >= since
            ),
            limit,
        )

    def path(self, from_key: str, to_key: str) -> list[PathStep] | None:
        if from_key not in self._entities or to_key not in self._entities:
            return None
        links: dict[str, dict[str, list[tuple[str, Direction]]]] = {}
        for rel in self._relationships:
            links.setdefault(rel.source_key, {}).setdefault(rel.target_key, []).append((rel.type, "out"))
            links.setdefault(rel.target_key, {}).setdefault(rel.source_key, []).append((rel.type, "in"))
        distance = _distances(links, to_key, MAX_PATH_HOPS)
        if from_key not in distance or from_key == to_key:
            return None
        keys, hops = [from_key], []
        while keys[-1] != to_key:  # the smallest next key one step closer; its smallest (type, direction)
            here = keys[-1]
            step = min(k for k in links[here] if distance.get(k) == distance[here] - 1)
            hops.append(min(links[here][step], key=lambda h: (h[0], h[1] != "out")))
            keys.append(step)
        return _steps(keys, hops, {k: self._name(k) for k in keys})

    def hubs(self, limit: int) -> list[Hub]:
        counts: dict[str, int] = {}
        for rel in self._relationships:
            for key in (rel.source_key, rel.target_key):
                counts[key] = counts.get(key, 0) + 1
        return _hubs(((self._name(k), n) for k, n in counts.items()), limit)


def _distances(links: dict[str, dict[str, list[tuple[str, Direction]]]], start: str, most: int) -> dict[str, int]:
    """Hops from `start` to every entity within `most` (breadth first)."""
    distance = {start: 0}
    frontier = [start]
    while frontier and distance[frontier[0]] < most:
        following = []
        for key in frontier:
            for other in links.get(key, {}):
                if other not in distance:
                    distance[other] = distance[key] + 1
                    following.append(other)
        frontier = following
    return distance


@contextmanager
def open_reader(settings: Settings, journal: Journal | None = None) -> Iterator[Reader]:
    """Neo4j when neo4j.uri is set (GraphUnavailable when it does not answer),
    else the journal alone (`journal`, or the configured one opened here)."""
    if settings.neo4j.enabled:
        from membrane.graph.store import GraphStore

        with GraphStore.connect(settings) as graph:
            yield GraphReader(graph)
        return
    if journal is not None:
        yield JournalReader.from_journal(settings, journal)
        return
    from membrane.journal import Journal

    with Journal(settings.journal.path) as opened:
        yield JournalReader.from_journal(settings, opened)


# ---------------------------------------------------------------- text


def _short(sha256: str) -> str:
    return sha256[:12]


def _source_line(source: Source, printable: Callable[[str], str]) -> str:
    return f"{source.captured_at}  {printable(source.path)}  {source.model}  {_short(source.sha256)}"


def _fields(*labelled: tuple[str, str]) -> list[str]:
    """Lines of a report's header: a label, then its value in one column."""
    return [f"  {label:<12}{value}" for label, value in labelled]


def entity_lines(report: EntityReport, printable: Callable[[str], str] = str) -> list[str]:
    """`membrane show` as text; `printable` escapes what must not reach a terminal raw."""
    p = printable
    lines = [
        f"{p(report.name)}  (key: {p(report.key)})",
        *_fields(
            ("aliases", ", ".join(p(a) for a in report.aliases)),
            ("first seen", as_written(report.first_seen, report.mentioned_in)),
            ("last seen", as_written(report.last_seen, report.mentioned_in)),
        ),
        f"  mentioned in {len(report.mentioned_in)} capture(s):",
        *(f"    {_source_line(s, p)}" for s in report.mentioned_in),
        f"  relationships ({len(report.facts)}):",
    ]
    for fact in report.facts:
        arrow = f"-[:{fact.type}]->" if fact.direction == "out" else f"<-[:{fact.type}]-"
        first, last = as_written(fact.first_seen, fact.sources), as_written(fact.last_seen, fact.sources)
        lines.append(f"    {arrow} {p(fact.other_name)}  (first {first}, last {last}, model {fact.model})")
        lines.extend(f"        {_source_line(s, p)}" for s in fact.sources)
    return lines


def capture_lines(report: CaptureReport, printable: Callable[[str], str] = str) -> list[str]:
    """`membrane facts` as text."""
    p = printable
    lines = [
        f"{p(report.path)}  (sha256 {report.sha256})",
        *_fields(
            ("dated", report.captured_at),
            ("ingested", report.ingested_at),
            ("model", f"{report.model}  (prompt {report.prompt_version})"),
        ),
        f"  entities ({len(report.entities)}):",
    ]
    for mention in report.entities:
        forms = f"  as {', '.join(p(a) for a in mention.aliases)}" if mention.aliases != (mention.name,) else ""
        lines.append(f"    {p(mention.name)}  [{mention.role}]{forms}")
    lines.append(f"  relationships ({len(report.facts)}):")
    for fact in report.facts:
        shared = f"  (also {fact.other_sources} other capture(s))" if fact.other_sources else "  (only this capture)"
        lines.append(f"    {p(fact.source_name)} -[:{fact.type}]-> {p(fact.target_name)}{shared}")
    return lines
