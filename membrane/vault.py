"""A vault's notes as Obsidian writes them: wikilinks, tags, and the index of
note names and front-matter aliases that links resolve against.

In vault mode the pipeline passes every Markdown capture through `linked`:

- ``[[Name]]``, ``[[Name|shown]]``, ``[[Name#heading]]``, ``[[folder/Name]]``
  (and an embedded note, ``![[Name]]``) are rendered as the reader sees them
  (the shown text, else the name), so the model reads prose, not brackets;
  an embedded file of another kind (``![[photo.png]]``) is left out of the
  text. Links inside code are left alone.
- Each link names the linked note: its file name without ``.md``, found by
  name, else by a front-matter alias (``aliases`` or ``alias``) of some note
  in the vault, else the link's own target. It is stored in the metadata as
  ``wikilinks``: ``[{"name": note name, "forms": [the link as written, the
  shown text, the note's aliases]}]``; resolve.capture_facts makes each an
  entity mentioned by the capture, and renames a model's entity whose key is
  one of the forms to the note's name (the link wins a disagreement).
- Tags, from the front matter (``tags``, a list or a string) and inline
  (``#tag``, ``#nested/tag``; not a number, a heading or inside code), are
  stored as ``tags`` and go onto the :Capture.

A link is resolved when its note is read, against the index as it is then:
the index is built from every note's front matter at the first read and
updated as notes are read, so a note that gains an alias later does not
change links already read (until their note is edited or `membrane sync`
re-projects what the journal holds, which keeps the links as they were read).
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from membrane.capture import Capture, Rejection, split_front_matter
from membrane.config import InboxSettings
from membrane.inbox import InboxFolders
from membrane.logs import get_logger

__all__ = ["VaultIndex", "inline_tags", "linked", "render_links"]

log = get_logger(__name__)

# [[target#heading|shown]], optionally embedded with "!".
_LINK = re.compile(
    r"(?P<embed>!?)\[\[(?P<target>[^\[\]|#^\n]*)(?P<anchor>[#^][^\[\]|\n]*)?(?:\|(?P<shown>[^\[\]\n]*))?\]\]"
)
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.S)
# Obsidian's tags: letters, digits, _, - and / (nesting), with at least one that is not a digit.
_TAG = re.compile(r"(?<![\w/&#])#(?P<tag>[\w/-]*[^\W\d][\w/-]*)")
# The most characters of a note read to find its front matter for the index.
_HEAD_BYTES = 80 * 1024
_NOTE_SUFFIXES = (".md",)


@dataclasses.dataclass(frozen=True)
class Link:
    """One wikilink as written: its target (a note's name), and the text shown for it."""

    target: str
    shown: str


def _note_name(target: str) -> str:
    name = target.strip().rsplit("/", 1)[-1]
    return name[:-3] if name.lower().endswith(".md") else name


def _outside_code(text: str) -> list[tuple[int, int]]:
    """The spans of `text` that are not code (fenced blocks, inline backticks)."""
    spans, start = [], 0
    for match in _CODE.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return spans


def render_links(text: str) -> tuple[str, list[Link]]:
    """The text as the reader sees it, and the note links it holds (embeds of other files dropped)."""
    links: list[Link] = []

    def render(match: re.Match[str]) -> str:
        target = match["target"].strip()
        is_note = not Path(target).suffix or target.lower().endswith(".md")
        if not target or not is_note:
            return "" if match["embed"] else (match["shown"] or target)
        shown = (match["shown"] or "").strip()
        links.append(Link(_note_name(target), shown))
        return shown or _note_name(target)

    parts = []
    last = 0
    for start, end in _outside_code(text):
        parts.append(text[last:start])
        parts.append(_LINK.sub(render, text[start:end]))
        last = end
    return "".join(parts), links


def inline_tags(text: str) -> list[str]:
    """The #tags of a note's text, outside code; "#" followed by a space is a heading, not a tag."""
    found = []
    for start, end in _outside_code(text):
        found += [m["tag"].strip("/") for m in _TAG.finditer(text, start, end)]
    return [t for t in found if t]


def _strings(value: Any, *, split: bool) -> list[str]:
    """A front-matter value that may be a list or a string (split at commas and spaces when
    `split`: tags are words, while an alias such as "Raspberry Pi" holds a space)."""
    if isinstance(value, str):
        values = re.split(r"[,\s]+", value) if split else [value]
    elif isinstance(value, list):
        values = [str(v) for v in value if isinstance(v, (str, int, float))]
    else:
        values = []
    return [v.strip() for v in values if v.strip()]


def front_matter_tags(metadata: Mapping[str, Any]) -> list[str]:
    return [t.lstrip("#") for t in _strings(metadata.get("tags"), split=True) if t.lstrip("#")]


def aliases_of(metadata: Mapping[str, Any]) -> list[str]:
    return _strings(metadata.get("aliases", metadata.get("alias")), split=False)


class VaultIndex:
    """Every note's name and front-matter aliases, for resolving links; thread-safe."""

    def __init__(self, settings: InboxSettings) -> None:
        self.folders = InboxFolders.of(settings)
        self._lock = threading.Lock()
        self._aliases: dict[str, tuple[str, list[str]]] = {}  # folded name -> (name, aliases)
        self._built = False

    def build(self) -> None:
        """Read every note's front matter (its head only); once, at the first read."""
        for path in self.folders.walk(self.folders.root):
            if path.suffix.lower() in _NOTE_SUFFIXES:
                self.note(path.stem, _head_metadata(path))
        self._built = True
        log.info("vault_indexed", notes=len(self._aliases))

    def note(self, name: str, metadata: Mapping[str, Any]) -> None:
        """Record (or update) one note's name and aliases."""
        with self._lock:
            self._aliases[name.casefold()] = (name, aliases_of(metadata))

    def resolve(self, target: str) -> tuple[str, list[str]]:
        """The linked note's name and aliases: by name, else by alias, else the target itself."""
        if not self._built:
            self.build()
        folded = target.casefold()
        with self._lock:
            if folded in self._aliases:
                return self._aliases[folded]
            for name, aliases in sorted(self._aliases.values()):
                if any(alias.casefold() == folded for alias in aliases):
                    return name, aliases
        return target, []


def _head_metadata(path: Path) -> Mapping[str, Any]:
    try:
        with path.open("rb") as handle:
            head = handle.read(_HEAD_BYTES).decode("utf-8", "replace")
        return split_front_matter(head)[1]
    except (OSError, Rejection):
        return {}


def linked(capture: Capture, index: VaultIndex) -> Capture:
    """A Markdown note with its links rendered and resolved, and its tags, in its metadata."""
    if capture.format != "md":
        return capture
    index.note(capture.path.stem, capture.metadata)
    text, links = render_links(capture.text)
    if not text.strip():
        raise Rejection("empty", "the note holds only embedded files, no text", hint="Write some text into the note.")
    metadata = dict(capture.metadata)
    wikilinks = _wikilinks(links, index)
    if wikilinks:
        metadata["wikilinks"] = wikilinks
    tags = sorted(set(front_matter_tags(metadata)) | set(inline_tags(text)))
    if tags:
        metadata["tags"] = tags
    return dataclasses.replace(capture, text=text, metadata=metadata)


def _wikilinks(links: Iterable[Link], index: VaultIndex) -> list[dict[str, Any]]:
    forms: dict[str, set[str]] = {}
    for link in links:
        name, aliases = index.resolve(link.target)
        forms.setdefault(name, set()).update(f for f in (link.target, link.shown, *aliases) if f.strip())
    return [{"name": name, "forms": sorted(found - {name})} for name, found in sorted(forms.items())]
