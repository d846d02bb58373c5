"""`membrane search`: entities by name and alias, captures by title and text,
from Neo4j (full-text indexes, migrations/0002_fulltext.cypher) or from the
journal alone (SQLite FTS5, journal/search.py), with the same answers.

Owns what a query means, how hits rank and what a hit carries:

- A query is cut into words as Lucene's standard tokenizer cuts them (letters
  and digits, with the marks and invisible format characters inside a word;
  `.`, `'` and `:` between two of them join, so "node.js" is one word),
  lower-cased; at most MAX_TERMS of them, each at most MAX_TERM_CHARS.
- An entity hit holds every word of the query as the start of one of its
  names' words ("rasp" finds "Raspberry Pi"); a capture hit holds every word
  of the query as a whole word of its title or text (a prefix in notes finds
  every "pi..." word, and would sort thousands of captures). Each store finds
  its candidates with
  its own index, in one shared order; the words are then checked here, so a
  store that cuts words differently (FTS5 splits "node.js") answers the same.
- Entities rank by how exactly they are named: the query's key is the
  entity's key (as `membrane show` and ingestion match it), then it is the key
  of one of its aliases, then every word is in its names, shorter keys first,
  then by key; with graph.fuzzy_threshold > 0 and no exact match, the keys as
  close as ingestion's fuzzy matching requires follow (rapidfuzz ratio). Each
  entity hit brings its key facts (the FACTS_PER_ENTITY relationships with the
  most captures behind them) and its newest capture.
- Captures rank newest first (then by sha256), each with a snippet of its
  text around the first word of the query.

With Neo4j and graph.store_text off, the graph holds no text: captures are
then found in the journal, which always holds it.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from rapidfuzz import fuzz, process

from membrane.errors import BadRequest
from membrane.journal import FACT_STATES
from membrane.journal.search import IndexedCapture, IndexedMention, SearchChange
from membrane.logs import get_logger
from membrane.resolve import capture_facts, capture_title, entity_key

if TYPE_CHECKING:
    from membrane.config import Settings
    from membrane.graph.store import GraphStore
    from membrane.journal import Journal

__all__ = [
    "MAX_LIMIT",
    "MAX_QUERY_CHARS",
    "CaptureHit",
    "CaptureRef",
    "EntityHit",
    "KeyFact",
    "SearchResult",
    "index_journal",
    "open_search",
    "search",
    "search_lines",
    "search_terms",
]

log = get_logger(__name__)

MAX_QUERY_CHARS = 500
MAX_TERMS = 16
MAX_TERM_CHARS = 64
MAX_LIMIT = 50
FACTS_PER_ENTITY = 3
SNIPPET_CHARS = 160
FUZZY_CANDIDATES = 5
# Lucene's fuzzy matches (two edits per word) handed over for the ratio check; past
# this many, the closest may be missed where the journal, checking every key, finds it.
FUZZY_ROWS = 500
# Rows each store hands over beyond the limit, for hits the word check drops.
_SPARE = 10
_INDEX_BATCH = 500


Row = dict[str, Any]
Match = Literal["key", "alias", "words", "fuzzy"]


# ---------------------------------------------------------------- what a hit is


@dataclass(frozen=True)
class CaptureRef:
    """The capture behind a hit: where it came from, its title and date when it has them."""

    sha256: str
    path: str
    title: str | None
    captured_at: str | None
    ingested_at: str


@dataclass(frozen=True)
class KeyFact:
    """One relationship of an entity hit; `sources`: how many captures state it."""

    source: str
    type: str
    target: str
    sources: int


@dataclass(frozen=True)
class EntityHit:
    """An entity the query names; `match` says how (key, alias, words, fuzzy)."""

    key: str
    name: str
    aliases: tuple[str, ...]
    match: Match
    facts: tuple[KeyFact, ...]
    capture: CaptureRef | None


@dataclass(frozen=True)
class CaptureHit:
    """A capture whose title or text holds every word of the query."""

    capture: CaptureRef
    snippet: str


@dataclass(frozen=True)
class SearchResult:
    """Entity hits and capture hits, each list ranked and at most `limit` long."""

    query: str
    terms: tuple[str, ...]
    entities: tuple[EntityHit, ...]
    captures: tuple[CaptureHit, ...]


# ---------------------------------------------------------------- words


@functools.cache
def _word() -> re.Pattern[str]:
    """A word: a letter, digit or underscore, then more of them or marks and format characters
    (which Lucene keeps inside a word); `.`, `'`, `’` or `:` between two such runs joins them.
    Built once, on first use: the marks are read from unicodedata."""
    inside: list[str] = []
    start = None
    for code in range(sys.maxunicode + 2):
        char = chr(code) if code <= sys.maxunicode else ""
        extra = bool(char) and unicodedata.category(char) in ("Mn", "Mc", "Me", "Cf")
        if extra and start is None:
            start = code
        elif not extra and start is not None:
            inside.append(f"{re.escape(chr(start))}-{re.escape(chr(code - 1))}")
            start = None
    run = f"\\w[\\w{''.join(inside)}]*"
    return re.compile(f"{run}(?:['’.:]{run})*")


def search_terms(query: str) -> tuple[str, ...]:
    """The query's words, lower-cased, each once, in order (see the module docstring)."""
    terms: dict[str, None] = {}
    for word in _word().findall(query[:MAX_QUERY_CHARS].lower()):
        terms.setdefault(word[:MAX_TERM_CHARS], None)
    return tuple(terms)[:MAX_TERMS]


def _words(texts: Sequence[str | None]) -> list[str]:
    return [word for text in texts if text for word in _word().findall(text.lower())]


def _holds(terms: Sequence[str], texts: Sequence[str | None], *, prefix: bool) -> bool:
    """Whether every term starts (with `prefix`) or is one of the texts' words."""
    words = _words(texts)
    if not prefix:
        return set(terms) <= set(words)
    return all(any(word.startswith(term) for word in words) for term in terms)


def _snippet(text: str, terms: Sequence[str]) -> str:
    """SNIPPET_CHARS of `text` around the first word that is a term, whitespace collapsed."""
    lowered = text.lower()
    starts = [m.start() for m in _word().finditer(lowered) if m.group() in terms]
    at = starts[0] if starts else 0
    begin = max(0, at - SNIPPET_CHARS // 3)
    window = " ".join(text[begin : begin + SNIPPET_CHARS].split())
    return ("…" if begin > 0 else "") + window + ("…" if begin + SNIPPET_CHARS < len(text) else "")


# ---------------------------------------------------------------- the stores


Details = tuple[list[Row], Row | None]  # an entity's key facts, its newest capture
Found = tuple[list[Row], dict[str, Details], list[Row]]  # entity candidates, details of the picked, captures


class SearchSource(Protocol):
    """Where hits come from: candidates in the shared order, and the details of the entities the caller picks."""

    def find(self, terms: Sequence[str], key: str, limit: int, pick: Callable[[list[Row]], list[str]]) -> Found: ...

    def fuzzy_entities(self, key: str, terms: Sequence[str], threshold: float) -> list[Row]: ...

    def entity_details(self, keys: Sequence[str]) -> dict[str, Details]: ...


def index_journal(settings: Settings, journal: Journal) -> int:
    """Bring the journal's search index up to date (the captures marked dirty); returns how many it indexed."""
    store = journal.search
    fuzzy = settings.graph.fuzzy_threshold > 0
    done = 0
    while batch := store.dirty(_INDEX_BATCH):
        known: list[str] = store.entity_keys() if fuzzy else []
        changes = []
        for sha256, version in batch:
            capture = _indexed(settings, journal, sha256, known)
            if capture is not None and fuzzy:
                known.extend(m.key for m in capture.mentions)
            changes.append(SearchChange(sha256, version, capture))
        store.apply(changes)
        done += len(changes)
    if done:
        log.debug("search_indexed", captures=done)
    return done


def _indexed(settings: Settings, journal: Journal, sha256: str, known: list[str]) -> IndexedCapture | None:
    record = journal.captures.get(sha256)
    if record is None or record.state not in FACT_STATES:
        return None
    stored = journal.extractions.latest(sha256)
    if stored is None:
        return None
    facts = capture_facts(record, stored.result, settings, known_keys=lambda: known)
    return IndexedCapture(
        sha256=sha256,
        path=record.path,
        title=capture_title(record.text, record.metadata),
        captured_at=record.captured_at,
        ingested_at=facts.ingested_at,
        model=facts.model,
        text=record.text,
        mentions=tuple(IndexedMention(e.key, e.name, e.aliases) for e in facts.entities),
        facts=tuple((r.source_key, r.type, r.target_key) for r in facts.relationships),
    )


class JournalSource:
    """The journal's FTS5 index, brought up to date when opened."""

    def __init__(self, settings: Settings, journal: Journal) -> None:
        index_journal(settings, journal)
        self._store = journal.search

    def find(self, terms: Sequence[str], key: str, limit: int, pick: Callable[[list[Row]], list[str]]) -> Found:
        entities = self._store.find_entities(terms, key, limit)
        return entities, self.entity_details(pick(entities)), self.find_captures(terms, limit)

    def find_captures(self, terms: Sequence[str], limit: int) -> list[Row]:
        return self._store.find_captures(terms, limit)

    def fuzzy_entities(self, key: str, terms: Sequence[str], threshold: float) -> list[Row]:
        keys = [
            k
            for k, _, _ in process.extract(
                key, self._store.entity_keys(), scorer=fuzz.ratio, score_cutoff=threshold, limit=FUZZY_CANDIDATES
            )
        ]
        rows = {row["key"]: row for row in self._store.entity_names(keys)} if keys else {}
        return [rows[k] for k in keys if k in rows]

    def entity_details(self, keys: Sequence[str]) -> dict[str, Details]:
        details = {}
        for key in keys:
            facts = sorted(self._store.entity_facts(key), key=lambda f: _fact_order(f, key))[:FACTS_PER_ENTITY]
            details[key] = (facts, self._store.newest_capture(key))
        return details


def _fact_order(fact: Row, key: str) -> tuple[Any, ...]:
    """Most captures first, then type, the other end's key, and outgoing before incoming."""
    outgoing = fact["source_key"] == key
    return (-fact["sources"], fact["type"], fact["target_key"] if outgoing else fact["source_key"], not outgoing)


class GraphSource:
    """Neo4j's full-text indexes; captures from `captures` (the journal) when the graph holds no text."""

    def __init__(self, graph: GraphStore, captures: JournalSource | None = None) -> None:
        self._graph = graph
        self._captures = captures

    def find(self, terms: Sequence[str], key: str, limit: int, pick: Callable[[list[Row]], list[str]]) -> Found:
        entities, details, captures = self._graph.search(
            terms, key, limit, captures=self._captures is None, facts=FACTS_PER_ENTITY, pick=pick
        )
        if self._captures is not None:
            captures = self._captures.find_captures(terms, limit)
        return entities, details, captures

    def fuzzy_entities(self, key: str, terms: Sequence[str], threshold: float) -> list[Row]:
        rows = self._graph.search(
            terms, key, FUZZY_ROWS, captures=False, facts=FACTS_PER_ENTITY, pick=lambda _: [], fuzzy=True
        ).entities
        scored = [(fuzz.ratio(key, row["key"]), row) for row in rows]
        close = sorted((item for item in scored if item[0] >= threshold), key=lambda item: (-item[0], item[1]["key"]))
        return [row for _, row in close[:FUZZY_CANDIDATES]]

    def entity_details(self, keys: Sequence[str]) -> dict[str, Details]:
        return self._graph.entity_details(keys, FACTS_PER_ENTITY)


@contextmanager
def open_search(settings: Settings, journal: Journal | None = None) -> Iterator[SearchSource]:
    """Neo4j when neo4j.uri is set (with the journal for captures when graph.store_text
    is off), else the journal alone (`journal`, or the configured one opened here)."""
    from membrane.journal import Journal

    if settings.neo4j.enabled:
        from membrane.graph.store import GraphStore

        with GraphStore.connect(settings) as graph:
            if settings.graph.store_text:
                yield GraphSource(graph)
                return
            with Journal(settings.journal.path) if journal is None else _kept(journal) as opened:
                yield GraphSource(graph, JournalSource(settings, opened))
        return
    with Journal(settings.journal.path) if journal is None else _kept(journal) as opened:
        yield JournalSource(settings, opened)


@contextmanager
def _kept(journal: Journal) -> Iterator[Journal]:
    """A journal the caller owns: used, not closed."""
    yield journal


# ---------------------------------------------------------------- ranking


def search(source: SearchSource, query: str, *, limit: int = 10, fuzzy_threshold: float = 0.0) -> SearchResult:
    """Entity and capture hits for `query` (see the module docstring); BadRequest when it has no words."""
    terms = search_terms(query)
    if not terms:
        raise BadRequest(
            f"the query {query[:80]!r} has no words to search for",
            hint="Search for a name or words of a note: letters or digits.",
        )
    limit = max(1, min(limit, MAX_LIMIT))
    key = entity_key(query[:MAX_QUERY_CHARS])

    def pick(rows: list[Row]) -> list[str]:
        return [row["key"] for row, _ in _ranked(rows, terms, key)[:limit]]

    rows, details, capture_rows = source.find(terms, key, limit + _SPARE, pick)
    entities = _ranked(rows, terms, key)[:limit]
    if fuzzy_threshold > 0 and not any(match in ("key", "alias") for _, match in entities):
        seen = {row["key"] for row, _ in entities}
        close = [row for row in source.fuzzy_entities(key, terms, fuzzy_threshold) if row["key"] not in seen]
        details.update(source.entity_details([row["key"] for row in close]))
        entities = ([(row, "fuzzy") for row in close] + entities)[:limit]
    captures = [row for row in capture_rows if _holds(terms, [row["title"], row["text"]], prefix=False)][:limit]
    return SearchResult(
        query=query,
        terms=terms,
        entities=tuple(_entity_hit(row, match, *details.get(row["key"], ([], None))) for row, match in entities),
        captures=tuple(CaptureHit(_capture_ref(row), _snippet(row["text"], terms)) for row in captures),
    )


def _ranked(rows: list[Row], terms: Sequence[str], key: str) -> list[tuple[Row, Match]]:
    """The rows that hold every term, by how exactly they name the query, then shorter keys, then key."""
    ranked: list[tuple[int, Row, Match]] = []
    for row in rows:
        if not _holds(terms, [row["name"], *row["aliases"]], prefix=True):
            continue
        match: Match = "key" if row["key"] == key else "alias" if key in map(entity_key, row["aliases"]) else "words"
        ranked.append((("key", "alias", "words").index(match), row, match))
    ranked.sort(key=lambda item: (item[0], len(item[1]["key"]), item[1]["key"]))
    return [(row, match) for _, row, match in ranked]


def _capture_ref(row: Row) -> CaptureRef:
    return CaptureRef(row["sha256"], row["path"], row.get("title"), row.get("captured_at"), row["ingested_at"])


def _entity_hit(row: Row, match: Match, facts: list[Row], capture: Row | None) -> EntityHit:
    return EntityHit(
        key=row["key"],
        name=row["name"],
        aliases=tuple(row["aliases"]),
        match=match,
        facts=tuple(KeyFact(f["source_name"], f["type"], f["target_name"], int(f["sources"])) for f in facts),
        capture=_capture_ref(capture) if capture else None,
    )


# ---------------------------------------------------------------- text


def _capture_line(ref: CaptureRef) -> str:
    title = f"  {ref.title!r}" if ref.title else ""
    date = ref.captured_at or ref.ingested_at
    return f"{ref.path}{title}  {date}  {ref.sha256[:12]}"


def search_lines(result: SearchResult, printable: Callable[[str], str] = str) -> list[str]:
    """`membrane search` as text; `printable` escapes what must not reach a terminal raw."""
    p = printable
    lines = [f"entities ({len(result.entities)}):"]
    for hit in result.entities:
        aliases = [a for a in hit.aliases if a != hit.name]
        also = f"  (also {', '.join(p(a) for a in aliases)})" if aliases else ""
        lines.append(f"  {p(hit.name)}  [{hit.match}]{also}")
        lines.extend(f"    {p(f.source)} -[:{f.type}]-> {p(f.target)}" for f in hit.facts)
        if hit.capture:
            lines.append(f"    from {p(_capture_line(hit.capture))}")
    lines.append(f"captures ({len(result.captures)}):")
    for capture in result.captures:
        lines.append(f"  {p(_capture_line(capture.capture))}")
        lines.append(f"    {p(capture.snippet)}")
    return lines
