"""MemBrane as an assistant's memory: what `membrane mcp` lets an assistant ask
and write, with every argument checked and every answer bounded. The MCP
wiring (tool names, descriptions, transports, the bearer token) is
mcp_server.py's; this module knows nothing of the protocol.

Reads answer from Neo4j when neo4j.uri is set, else from the journal alone,
with the same answers (explore.py, search.py): search, an entity (`membrane
show`), a capture (`membrane facts`), what changed recently, the path between
two entities, the most connected entities.

Writes are off unless mcp.allow_write is set, and never touch the graph
directly:
- `remember` writes a Markdown note (front matter: title, tags, source,
  captured_at) into the inbox, whole or not at all (files.atomic_write: a
  temporary name starting with "." that the inbox ignores, then a rename), and
  returns its sha256; the daemon ingests it like any other file.
- `capture_status` says where a capture is: waiting in the inbox, being
  extracted, in the graph, failed or forgotten.
- `forget` retracts a capture as `membrane forget` does (Pipeline.retract).
Every write call is logged (tool, sha256, sizes; never the note's text).

No argument is a file path: captures are named by sha256 only. Text
arguments are bounded (MAX_* below) and hold no control characters (a note's
text may hold line breaks and tabs); anything else is a BadRequest, which
changes nothing. Lists in answers are cut at MAX_ITEMS, with how many were left out.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import yaml

from membrane.clock import format_iso_utc
from membrane.errors import BadRequest, NotFound
from membrane.explore import (
    CaptureReport,
    EntityReport,
    GraphReader,
    Hub,
    JournalReader,
    PathStep,
    Reader,
    RecentCapture,
    find_entity,
)
from membrane.files import atomic_write
from membrane.journal import FACT_STATES, Journal
from membrane.logs import get_logger
from membrane.search import GraphSource, JournalSource, SearchResult, SearchSource, index_journal, search

if TYPE_CHECKING:
    from membrane.config import Settings
    from membrane.graph.store import GraphStore

__all__ = [
    "MAX_ITEMS",
    "CaptureAnswer",
    "CaptureStatus",
    "EntityAnswer",
    "Forgotten",
    "HubsAnswer",
    "Memory",
    "PathAnswer",
    "RecentAnswer",
    "Remembered",
]

log = get_logger(__name__)

MAX_QUERY_CHARS = 500
MAX_NAME_CHARS = 200
MAX_TITLE_CHARS = 200
MAX_SOURCE_CHARS = 200
MAX_TAGS = 16
MAX_TAG_CHARS = 64
MAX_LIMIT = 50
MAX_DAYS = 3650
# Facts, captures or entities an answer lists; the rest are counted.
MAX_ITEMS = 100

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PREFIX = re.compile(r"^[0-9a-f]{8,64}$")
_NOTE_CONTROLS = frozenset("\n\r\t")

WriteTool = Literal["remember", "capture_status", "forget"]
T = TypeVar("T")


# ---------------------------------------------------------------- answers


@dataclass(frozen=True)
class EntityAnswer:
    """`membrane show`'s report, its lists cut at MAX_ITEMS; how many facts and captures were left out."""

    entity: EntityReport
    omitted_facts: int
    omitted_captures: int


@dataclass(frozen=True)
class CaptureAnswer:
    """`membrane facts`' report, its lists cut at MAX_ITEMS; how many entities and facts were left out."""

    capture: CaptureReport
    omitted_entities: int
    omitted_facts: int


@dataclass(frozen=True)
class RecentAnswer:
    """Captures ingested in the last `days` days, newest first."""

    since: str
    captures: tuple[RecentCapture, ...]


@dataclass(frozen=True)
class PathAnswer:
    """The shortest path between two entities (empty `steps` and found False when there is none)."""

    source: str
    target: str
    found: bool
    steps: tuple[PathStep, ...]


@dataclass(frozen=True)
class HubsAnswer:
    """The most connected entities."""

    hubs: tuple[Hub, ...]


@dataclass(frozen=True)
class Remembered:
    """A note written into the inbox: its sha256 (the capture it becomes) and file name."""

    sha256: str
    file: str
    status: str


@dataclass(frozen=True)
class CaptureStatus:
    """Where a capture is. `state`: waiting (a file in the inbox, not read yet), queued,
    extracting, extracted, projected, done, failed or retracted; `in_graph`: its facts
    are in the store the reads answer from."""

    sha256: str
    state: str
    in_graph: bool
    path: str | None
    ingested_at: str | None
    error: str | None


@dataclass(frozen=True)
class Forgotten:
    """A retracted capture; `graph_pending` when Neo4j was down and the daemon finishes it later."""

    sha256: str
    path: str
    graph_pending: bool


# ---------------------------------------------------------------- checks


def _text(value: str, what: str, most: int, *, lines: bool = False) -> str:
    """`value` stripped, non-empty, at most `most` characters, without control characters or line
    separators (with `lines`, line breaks and tabs are fine). Invisible format characters (a
    zero-width joiner, a direction mark) are text: names and notes in any script hold them."""
    if len(value) > most:
        raise BadRequest(f"{what} is {len(value)} characters long; at most {most} are allowed")
    value = value.strip()
    if not value:
        raise BadRequest(f"{what} is empty")
    bad = next((c for c in value if _forbidden(c) and not (lines and c in _NOTE_CONTROLS)), None)
    if bad is not None:
        raise BadRequest(
            f"{what} holds the control character U+{ord(bad):04X}",
            hint="Send plain text" + (" (line breaks and tabs are fine)." if lines else " on one line."),
        )
    return value


def _forbidden(char: str) -> bool:
    return unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp")


def _bounded(value: int, what: str, least: int, most: int) -> int:
    if not least <= value <= most:
        raise BadRequest(f"{what} = {value} is outside {least}..{most}")
    return value


def _sha256(value: str, *, prefix: bool = False) -> str:
    value = value.strip().lower()
    if not (_PREFIX if prefix else _SHA256).match(value):
        raise BadRequest(
            f"{value[:80]!r} is not a sha256" + (" or a prefix of 8+ hex digits" if prefix else ""),
            hint="Name a capture by the sha256 that search, remember or an entity's captures give.",
        )
    return value


def _cut(items: tuple[T, ...]) -> tuple[tuple[T, ...], int]:
    return items[:MAX_ITEMS], max(0, len(items) - MAX_ITEMS)


# ---------------------------------------------------------------- the memory


class Memory:
    """The tools' work over one configuration. Thread-safe: the MCP server calls it
    from worker threads; Neo4j (when configured) and the journal stay open."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._journal = Journal(settings.journal.path)
        self._graph: GraphStore | None = None
        self._lock = threading.Lock()
        # The journal's graph (journal-only), with the index generation it was built at.
        self._journal_reader: tuple[int, JournalReader] | None = None

    def close(self) -> None:
        if self._graph is not None:
            self._graph.close()
        self._journal.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _store(self) -> GraphStore | None:
        """The Neo4j store, connected on first use (and again after an outage closed it)."""
        if not self.settings.neo4j.enabled:
            return None
        with self._lock:
            if self._graph is None:
                from membrane.graph.store import GraphStore

                self._graph = GraphStore.connect(self.settings)
            return self._graph

    @contextmanager
    def _reader(self) -> Iterator[Reader]:
        graph = self._store()
        yield GraphReader(graph) if graph is not None else self._journal_graph()

    def _journal_graph(self) -> JournalReader:
        """The graph built from the whole journal (export.collect), built again only when the search
        index saw the captures' facts change: building it costs about a millisecond per capture."""
        index_journal(self.settings, self._journal)
        generation = self._journal.search.generation()
        with self._lock:
            if self._journal_reader is None or self._journal_reader[0] != generation:
                self._journal_reader = (generation, JournalReader.from_journal(self.settings, self._journal))
            return self._journal_reader[1]

    def _source(self) -> SearchSource:
        graph = self._store()
        if graph is None:
            return JournalSource(self.settings, self._journal)
        text_in_graph = self.settings.graph.store_text
        return GraphSource(graph, None if text_in_graph else JournalSource(self.settings, self._journal))

    # -- reads

    def search(self, query: str, limit: int = 10) -> SearchResult:
        query = _text(query, "the query", MAX_QUERY_CHARS)
        limit = _bounded(limit, "limit", 1, MAX_LIMIT)
        return search(self._source(), query, limit=limit, fuzzy_threshold=self.settings.graph.fuzzy_threshold)

    def entity(self, name: str) -> EntityAnswer:
        name = _text(name, "the name", MAX_NAME_CHARS)
        with self._reader() as reader:
            report = find_entity(reader, name, self.settings.graph.fuzzy_threshold)
        facts, omitted_facts = _cut(report.facts)
        captures, omitted_captures = _cut(report.mentioned_in)
        cut = dataclasses.replace(report, facts=facts, mentioned_in=captures)
        return EntityAnswer(cut, omitted_facts, omitted_captures)

    def capture(self, sha256: str) -> CaptureAnswer:
        """A capture by its sha256 or a unique prefix of 8+ hex digits."""
        wanted = _sha256(sha256, prefix=True)
        if len(wanted) == 64:
            record = self._journal.captures.get(wanted)
            matches = [wanted] if record is not None and record.state in FACT_STATES else []
        else:
            matches = [r.sha256 for r in self._journal.captures.in_states(FACT_STATES) if r.sha256.startswith(wanted)]
        if len(matches) != 1:
            raise NotFound(
                f"no capture with facts has the sha256 {wanted!r}"
                if not matches
                else f"{len(matches)} captures start with {wanted!r}; give more digits",
                hint="A failed, forgotten or not yet ingested capture has no facts (capture_status).",
            )
        with self._reader() as reader:
            report = reader.capture(matches[0])
        if report is None:
            raise NotFound(
                f"capture {matches[0][:12]} is not in Neo4j yet",
                hint="It is waiting for projection; ask again shortly.",
            )
        entities, omitted_entities = _cut(report.entities)
        facts, omitted_facts = _cut(report.facts)
        cut = dataclasses.replace(report, entities=entities, facts=facts)
        return CaptureAnswer(cut, omitted_entities, omitted_facts)

    def recent(self, days: int = 7, limit: int = 25) -> RecentAnswer:
        days = _bounded(days, "days", 1, MAX_DAYS)
        limit = _bounded(limit, "limit", 1, MAX_ITEMS)
        since = format_iso_utc(datetime.now(UTC) - timedelta(days=days))
        with self._reader() as reader:
            captures = reader.recent(since, limit)
        return RecentAnswer(since, tuple(dataclasses.replace(c, entities=c.entities[:MAX_ITEMS]) for c in captures))

    def path(self, source: str, target: str) -> PathAnswer:
        source = _text(source, "the first name", MAX_NAME_CHARS)
        target = _text(target, "the second name", MAX_NAME_CHARS)
        with self._reader() as reader:
            start, end = (find_entity(reader, n, self.settings.graph.fuzzy_threshold) for n in (source, target))
            steps = reader.path(start.key, end.key) if start.key != end.key else []
        return PathAnswer(start.name, end.name, steps is not None, tuple(steps or ()))

    def hubs(self, limit: int = 10) -> HubsAnswer:
        limit = _bounded(limit, "limit", 1, MAX_LIMIT)
        with self._reader() as reader:
            return HubsAnswer(tuple(reader.hubs(limit)))

    # -- writes

    def _allow(self, tool: WriteTool) -> None:
        if not self.settings.mcp.allow_write:
            log.warning("assistant_write_refused", tool=tool)
            raise BadRequest(
                f"{tool} is a write tool, and writes are off",
                hint="The owner can set [mcp] allow_write = true in the config.",
            )

    def remember(
        self, text: str, title: str | None = None, tags: list[str] | None = None, source: str | None = None
    ) -> Remembered:
        """Write a note into the inbox (see the module docstring); the daemon ingests it."""
        self._allow("remember")
        note = _note_bytes(_text(text, "the text", self.settings.inbox.max_bytes, lines=True), title, tags, source)
        if len(note) > self.settings.inbox.max_bytes:
            raise BadRequest(f"the note is {len(note)} bytes; the inbox takes at most {self.settings.inbox.max_bytes}")
        sha256 = hashlib.sha256(note).hexdigest()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"remember-{stamp}-{sha256[:12]}.md"
        inbox = Path(self.settings.inbox.path)
        inbox.mkdir(parents=True, exist_ok=True)
        with atomic_write(inbox / name, binary=True) as handle:
            handle.write(note)
        log.info(
            "assistant_write",
            tool="remember",
            sha256=sha256,
            file=name,
            bytes=len(note),
            title=title is not None,
            tags=len(tags or ()),
        )
        return Remembered(sha256, name, "waiting")

    def capture_status(self, sha256: str) -> CaptureStatus:
        self._allow("capture_status")
        sha256 = _sha256(sha256)
        log.info("assistant_write", tool="capture_status", sha256=sha256)
        record = self._journal.captures.get(sha256)
        if record is None:
            waiting = sorted(Path(self.settings.inbox.path).glob(f"remember-*-{sha256[:12]}.md"))
            if not waiting:
                raise NotFound(f"no capture has the sha256 {sha256[:12]}…, and no note with it waits in the inbox")
            return CaptureStatus(sha256, "waiting", False, waiting[0].name, None, None)
        graph_states = ("projected", "done") if self.settings.neo4j.enabled else FACT_STATES
        error = f"{record.stage}: {record.last_error}" if record.state == "failed" else record.last_error
        return CaptureStatus(sha256, record.state, record.state in graph_states, record.path, record.ingested_at, error)

    def forget(self, sha256: str) -> Forgotten:
        self._allow("forget")
        sha256 = _sha256(sha256)
        from membrane.pipeline import GraphLink, Pipeline

        record = self._journal.captures.get(sha256)
        if record is None or record.state not in FACT_STATES:
            log.info("assistant_write", tool="forget", sha256=sha256, outcome="no facts")
            raise NotFound(
                f"no capture with facts has the sha256 {sha256[:12]}…", hint="capture_status tells where a capture is."
            )
        pipeline = Pipeline(self.settings, self._journal, graph=GraphLink(self.settings, self._store()))
        pipeline.retract(sha256, reason="forget (assistant)")
        after = self._journal.captures.get(sha256)
        pending = after is not None and after.graph_retraction_pending
        log.info("assistant_write", tool="forget", sha256=sha256, outcome="retracted", graph_pending=pending)
        return Forgotten(sha256, record.path, pending)


def _note_bytes(text: str, title: str | None, tags: list[str] | None, source: str | None) -> bytes:
    """The note as a Markdown capture: YAML front matter (one-line values only), then the text."""
    meta: dict[str, object] = {}
    if title is not None:
        meta["title"] = _text(title, "the title", MAX_TITLE_CHARS)
    if tags:
        if len(tags) > MAX_TAGS:
            raise BadRequest(f"{len(tags)} tags; at most {MAX_TAGS} are allowed")
        meta["tags"] = [_text(tag, "a tag", MAX_TAG_CHARS) for tag in tags]
    if source is not None:
        meta["source"] = _text(source, "the source", MAX_SOURCE_CHARS)
    meta["captured_at"] = format_iso_utc(datetime.now(UTC))
    front = yaml.safe_dump(meta, allow_unicode=True, sort_keys=False, default_flow_style=False, width=1 << 20)
    return f"---\n{front}---\n{text}\n".encode()
