"""Entity resolution: from one capture's validated Extraction to CaptureFacts,
the deterministic, key-addressed facts the graph writer MERGEs.

Owns entity keys, aliases, optional fuzzy matching against known keys, and
the canonical relation types of relationships. Decisions (also in
docs/design-notes.md, "## Graph"):

- A key is the name under Unicode NFKC, case-folded, with punctuation turned
  into spaces (except `.`, `&`, `'`, `/`, `@` between two word characters, as
  in "node.js" or "at&t", and `#` right after one, as in "c#"), whitespace
  collapsed, and one leading article ("the", "a", "an") dropped when a word
  remains. A name of punctuation only keeps its case-folded form as the key.
- Every surface form that resolved to a key in a capture is kept (sorted,
  unique) in that entity's aliases; the first one is its display name.
- With graph.fuzzy_threshold > 0, a key with no exact match takes the best
  known key (rapidfuzz ratio) scoring at least the threshold; known keys are
  the graph's (sorted, so ties resolve the same way every time) plus the keys
  already resolved in the same capture.
- Relation types go through the same ExtractionRules.canonical_relation the
  validator uses, so synonyms map to canonical types here too.
- ingested_at and captured_utc (the capture's own date, `captured_at` as the
  note writes it, in UTC) are normalised to "YYYY-MM-DDTHH:MM:SS.ffffffZ" (a
  naive time, or a date alone at midnight, counts as UTC), so string order is
  time order and re-projection writes byte-identical values.
- A capture's title is its metadata's `title`, else a Markdown heading on its
  first line. Its text and title travel with its facts only when
  graph.store_text is on.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rapidfuzz import fuzz, process

from membrane.clock import format_iso_utc
from membrane.config import Settings
from membrane.errors import GraphWriteError
from membrane.logs import get_logger
from membrane.schema import Extraction, ExtractionRules

if TYPE_CHECKING:
    from membrane.journal import CaptureRecord
    from membrane.records import ExtractionResult

__all__ = [
    "CaptureFacts",
    "CaptureSource",
    "ResolvedEntity",
    "ResolvedRelationship",
    "Resolver",
    "Wikilink",
    "capture_facts",
    "capture_tags",
    "capture_title",
    "entity_key",
    "normalize_timestamp",
    "note_moment",
    "wikilinks",
]

log = get_logger(__name__)

_ARTICLES = frozenset({"the", "a", "an"})
# Joiners kept between two word characters ("node.js", "at&t", "o'neil", "tcp/ip").
_INNER_JOINERS = frozenset(".&'/@")
# A title is one line of at most this many characters.
MAX_TITLE_CHARS = 200


@dataclass(frozen=True)
class ResolvedEntity:
    key: str
    name: str
    role: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class ResolvedRelationship:
    source_key: str
    type: str
    target_key: str


@dataclass(frozen=True)
class CaptureSource:
    """A capture as provenance: where and when it was written, which model read it.

    captured_at is the capture's own date as the note writes it (for people);
    captured_utc the same moment normalised (note_moment), the time its facts
    are dated by.
    """

    sha256: str
    path: str
    ingested_at: str
    model: str
    captured_at: str = field(kw_only=True)
    captured_utc: str = field(kw_only=True)


@dataclass(frozen=True)
class CaptureFacts(CaptureSource):
    """Everything the graph holds about one capture, keyed deterministically;
    its text and title only when graph.store_text is on."""

    prompt_version: str
    entities: tuple[ResolvedEntity, ...]
    relationships: tuple[ResolvedRelationship, ...]
    title: str | None = None
    text: str | None = None
    tags: tuple[str, ...] = field(default=(), kw_only=True)  # the capture's tags, sorted


@dataclass(frozen=True)
class Wikilink:
    """A note a vault note links to: its name, and the forms that mean it (the link as
    written, the text shown for it, the note's aliases)."""

    name: str
    forms: tuple[str, ...] = ()


def wikilinks(metadata: Mapping[str, Any]) -> tuple[Wikilink, ...]:
    """The `wikilinks` a vault note's metadata carries (vault.linked writes them); none
    unless the value has exactly that shape, so other metadata never turns into entities."""
    value = metadata.get("wikilinks")
    if not isinstance(value, list):
        return ()
    out = []
    for item in value:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and item["name"].strip()
            and isinstance(item.get("forms", []), list)
            and all(isinstance(f, str) for f in item.get("forms", []))
        ):
            return ()
        out.append(Wikilink(item["name"].strip(), tuple(item.get("forms", []))))
    return tuple(out)


def capture_tags(metadata: Mapping[str, Any]) -> tuple[str, ...]:
    """A capture's tags (a JSON capture's, front matter's, a vault note's), sorted and unique;
    a string of tags is split at commas and spaces, a leading "#" dropped."""
    value = metadata.get("tags")
    items = value.replace(",", " ").split() if isinstance(value, str) else value if isinstance(value, list) else []
    return tuple(
        sorted(
            {
                str(t).strip().lstrip("#")
                for t in items
                if isinstance(t, (str, int, float)) and str(t).strip().lstrip("#")
            }
        )
    )


def _is_word(char: str) -> bool:
    return char.isalnum() or unicodedata.category(char) in ("Mn", "Mc")


def _strip_punctuation(text: str) -> str:
    out: list[str] = []
    for i, char in enumerate(text):
        if not unicodedata.category(char).startswith("P"):
            out.append(char)
            continue
        before = text[i - 1] if i > 0 else " "
        after = text[i + 1] if i + 1 < len(text) else " "
        keep_inner = char in _INNER_JOINERS and _is_word(before) and _is_word(after)
        keep_sharp = char == "#" and _is_word(before) and not _is_word(after)
        out.append(char if keep_inner or keep_sharp else " ")
    return "".join(out)


def entity_key(name: str) -> str:
    """The key under which every surface form of one entity meets: ``'The  Raspberry-Pi!'`` -> ``'raspberry pi'``."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    words = _strip_punctuation(folded).split()
    if len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words) or " ".join(folded.split())


def normalize_timestamp(value: str) -> str:
    """ISO-8601 -> UTC with microseconds and a Z; raises ValueError on anything else."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_iso_utc(moment)


def note_moment(value: str) -> str:
    """A note's own date as normalize_timestamp writes it, whole seconds (floored) before
    1970: Neo4j builds a DATETIME from epoch seconds and a nanosecond that may not be
    negative, and below the second a note's date says nothing."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.timestamp() < 0:
        moment = moment.replace(microsecond=0)
    return format_iso_utc(moment)


class _KeyMatcher:
    """Maps a fresh key to a known one when fuzzy matching is on."""

    def __init__(self, threshold: float, known: Iterable[str]) -> None:
        self.threshold = threshold
        self.known: list[str] = sorted(set(known)) if threshold > 0 else []
        self._known_set = set(self.known)

    def match(self, key: str) -> str:
        if self.threshold <= 0 or key in self._known_set:
            return key
        best = process.extractOne(key, self.known, scorer=fuzz.ratio, score_cutoff=self.threshold)
        if best is None:
            self.add(key)
            return key
        log.debug("entity_fuzzy_match", key=key, matched=best[0], score=round(best[1], 1))
        return str(best[0])

    def add(self, key: str) -> None:
        if self.threshold > 0 and key not in self._known_set:
            self._known_set.add(key)
            self.known.append(key)


class Resolver:
    """Turns an Extraction into CaptureFacts; pure apart from reading known keys."""

    def __init__(self, settings: Settings, known_keys: Callable[[], Iterable[str]] | None = None) -> None:
        self.settings = settings
        self.rules: ExtractionRules = settings.extraction.rules()
        self._known_keys = known_keys

    def resolve(
        self,
        extraction: Extraction,
        *,
        sha256: str,
        path: str,
        ingested_at: str,
        model: str,
        prompt_version: str,
        captured_at: str | None = None,
        links: Sequence[Wikilink] = (),
        tags: tuple[str, ...] = (),
    ) -> CaptureFacts:
        """The capture's facts; `captured_at` is its own date as the note writes it (None: ingested_at).

        `links` (a vault note's wikilinks) are entities the capture mentions; a model's
        entity whose key is one of a link's forms takes the linked note's name (the link
        wins), its own surface form kept among the aliases.
        """
        matcher = self._matcher()
        forms: dict[str, list[str]] = {}
        roles: dict[str, str] = {}
        linked = {entity_key(form): link.name for link in links for form in (link.name, *link.forms)}
        for entity in extraction.entities:
            key = self._key(linked.get(entity_key(entity.name), entity.name), matcher)
            forms.setdefault(key, []).append(entity.name)
            roles.setdefault(key, entity.role)
        relationships: set[ResolvedRelationship] = set()
        for rel in extraction.relationships:
            ends = []
            for name, role in ((rel.source, "subject"), (rel.target, "object")):
                key = self._key(linked.get(entity_key(name), name), matcher)
                forms.setdefault(key, []).append(name)
                roles.setdefault(key, role)
                ends.append(key)
            if ends[0] != ends[1]:  # two spellings of one entity: a self-loop says nothing
                relationships.add(ResolvedRelationship(ends[0], self._relation(rel.relation, sha256), ends[1]))
        for link in links:  # the linked note's name first: it names the entity
            key = self._key(link.name, matcher)
            forms[key] = [link.name, *forms.get(key, [])]
            roles.setdefault(key, "object")
        entities = tuple(
            ResolvedEntity(key=key, name=names[0], role=roles[key], aliases=tuple(sorted(set(names))))
            for key, names in sorted(forms.items())
        )
        return CaptureFacts(
            sha256=sha256,
            path=path,
            ingested_at=normalize_timestamp(ingested_at),
            captured_at=captured_at or ingested_at,
            captured_utc=note_moment(captured_at or ingested_at),
            model=model,
            prompt_version=prompt_version,
            entities=entities,
            relationships=tuple(sorted(relationships, key=lambda r: (r.type, r.source_key, r.target_key))),
            tags=tags,
        )

    def _matcher(self) -> _KeyMatcher:
        threshold = self.settings.graph.fuzzy_threshold
        known = self._known_keys() if threshold > 0 and self._known_keys is not None else ()
        return _KeyMatcher(threshold, known)

    @staticmethod
    def _key(name: str, matcher: _KeyMatcher) -> str:
        return matcher.match(entity_key(name))

    def _relation(self, relation: str, sha256: str) -> str:
        try:
            return self.rules.canonical_relation(relation)
        except ValueError as exc:
            # Only reachable when the extraction was validated under other rules
            # (e.g. re-projecting an old journal entry after a vocabulary change).
            raise GraphWriteError(f"capture {sha256}: {exc}") from exc


def _one_line(value: str, limit: int) -> str | None:
    line = " ".join(value.split())[:limit].strip()
    return line or None


def capture_title(text: str, metadata: Mapping[str, Any]) -> str | None:
    """The capture's title: its metadata's `title`, else a Markdown heading (`# ...`) on its first line."""
    title = metadata.get("title")
    if isinstance(title, str) and title.strip():
        return _one_line(title, MAX_TITLE_CHARS)
    first = text.lstrip().partition("\n")[0]
    return _one_line(first[2:], MAX_TITLE_CHARS) if first.startswith("# ") else None


def capture_facts(
    record: CaptureRecord,
    result: ExtractionResult,
    settings: Settings,
    known_keys: Callable[[], Iterable[str]] | None = None,
) -> CaptureFacts:
    """Resolve a capture's extraction result into the facts the graph holds.

    The caller passes the result it holds (the worker's fresh one, or one the
    journal read back for recovery, sync or export); nothing is read here.
    """
    facts = Resolver(settings, known_keys).resolve(
        result.extraction,
        sha256=record.sha256,
        path=record.path,
        ingested_at=record.ingested_at,
        model=f"{result.backend}:{result.model}",
        prompt_version=result.prompt_version,
        captured_at=record.captured_at or None,
        links=wikilinks(record.metadata),
        tags=capture_tags(record.metadata),
    )
    stored = settings.graph.store_text
    return dataclasses.replace(
        facts,
        title=capture_title(record.text, record.metadata) if stored else None,
        text=record.text if stored else None,
    )
