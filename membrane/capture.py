"""Reading one capture file: the formats, their metadata, the sha256, the
reasons a file is refused, and the path a capture goes by in the journal.

Formats:
- ``.txt``: the whole file is the text.
- ``.md``: an optional YAML front matter block (``---`` ... ``---`` or ``...``
  at the very top) becomes the capture's metadata; the rest is the text.
- ``.json``: ``{"text": ..., "source": ..., "captured_at": ..., "tags": [...]}``;
  only "text" is required; any other key is an error naming that key.
- ``.pdf``, ``.html``/``.htm``, ``.docx``, ``.eml``: documents, converted to
  text and metadata by membrane.formats in a child process (refusals keep the
  converter's code: encrypted, no_text_layer, zip_bomb, missing_extra, ...).
  Each format has its own size limit (inbox.format_max_bytes), and the
  converted text a cap (inbox.max_text_chars).

The capture's own date (`Capture.captured_at`, see `note_date`): the first of
the metadata's captured_at, date, created (a JSON capture's captured_at, front
matter, an e-mail's Date, a PDF's CreationDate, a web page's or Word file's
date) that reads as an ISO-8601 date or time, as the note writes it; else the
file's modification time, in UTC to the second.

Decisions (also in docs/design-notes.md, "Journal and inbox"):
- The sha256 is of the file's bytes: the same bytes are the same capture.
- A front matter block that is not valid YAML is a rejection naming the line:
  the person meant metadata, and ingesting it as text would put YAML into the
  graph. A block that parses to something other than a mapping (two
  horizontal rules around a paragraph) is not front matter: all of it is text.
- A file is opened with O_NONBLOCK|O_NOFOLLOW only after lstat says it is a
  regular file (or a symlink to one inside the inbox), and fstat re-checks it:
  a FIFO is never opened, and a swap between the checks is caught; on Linux
  the open file's own path (/proc/self/fd) must lie inside the inbox too, so
  a folder swapped for a symlink on the way is caught as well.
- A file name that is not valid UTF-8 is a rejection (bad_name), like
  undecodable text: the journal and Neo4j store names as text.
- A file that disappears before it is read raises CaptureVanished, which is
  not a failure: the caller just forgets it.
- Parsed data must be storable as UTF-8 JSON: a JSON or YAML escape of a lone
  surrogate (``"\\ud800"``), a number over Python's int-to-str digit limit, or
  nesting past MAX_METADATA_DEPTH (or the parser's recursion limit) is a
  rejection naming the problem, never an exception further down (fuzzing,
  docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic_core import ErrorDetails

from membrane.clock import ISO_SECONDS_FORMAT
from membrane.config import InboxSettings
from membrane.errors import CaptureRejected, MembraneError, error_key, error_message, validation_line
from membrane.formats import DOCUMENT_FORMATS, ConversionRefused, Limits, convert_isolated

__all__ = [
    "Capture",
    "CaptureVanished",
    "Rejection",
    "capture_path",
    "note_date",
    "read_capture",
    "split_front_matter",
]

# Nodes a front matter may expand to; YAML aliases can make a tiny file expand
# exponentially when converted to JSON.
MAX_METADATA_NODES = 10_000
# Levels of nesting a front matter may hold; a self-referencing alias is endless.
MAX_METADATA_DEPTH = 32
# Characters a front matter block may hold: metadata is a few lines, and
# 400 KB of YAML took 9 s to load on a busy 2-core machine (fuzzing).
MAX_FRONT_MATTER_CHARS = 64 * 1024
# libyaml's safe loader when PyYAML has it: the pure-Python scanner takes seconds
# (quadratic) on a front matter of 64 KiB of "[", libyaml caps nesting at once.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SURROGATE = re.compile("[\ud800-\udfff]")
# Metadata keys that give the capture's own date, in order (see note_date).
DATE_KEYS = ("captured_at", "date", "created")
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(?P<yaml>.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", re.S | re.M)

_HINTS = {
    "unknown_extension": "Save the capture as {extensions} (inbox.extensions), then move it back to the inbox.",
    "invalid_utf8": "Save the file as UTF-8 text, then move it back to the inbox.",
    "binary": "Only text captures are read; save the text as .txt or .md, then move it back to the inbox.",
    "empty": "Write some text into the capture, then move it back to the inbox.",
    "too_large": "Split the capture into smaller files, or raise inbox.max_bytes.",
    "symlink_outside": "Copy the file into the inbox instead of linking to a file outside it.",
    "broken_symlink": "The link points at nothing; copy the real file into the inbox.",
    "not_regular": "Only regular files are read; copy the content into a .txt file in the inbox.",
    "bad_front_matter": "Fix the YAML between the --- lines at the top of the file (or remove it), "
    "then move it back to the inbox.",
    "bad_name": "Rename the file with a UTF-8 name, then move it back to the inbox.",
    "bad_json": 'Write the capture as {{"text": "...", "source": "...", "captured_at": "...", "tags": [...]}}, '
    "then move it back to the inbox.",
}


class Rejection(CaptureRejected):
    """A capture file refused for a reason a person can act on; `code` names the reason."""

    def __init__(self, code: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint if hint is not None else _HINTS.get(code, ""))
        self.code = code


class CaptureVanished(MembraneError):
    """The file went away (or was replaced) before it was read: forget it, it is not a failure."""


@dataclass(frozen=True)
class Capture:
    """A capture file, read and parsed."""

    path: Path
    text: str
    sha256: str  # of the file's bytes
    format: str  # "txt", "md", "json", "pdf", "html", "docx" or "eml"
    size: int
    # The person's metadata: front matter, the JSON capture's source/captured_at/tags,
    # or what a document carries (title, author, date, source URL, an e-mail's from/to).
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # The capture's own date, ISO-8601 as the note writes it (note_date), else the file's mtime.
    captured_at: str = ""


def capture_path(path: Path, inbox: Path) -> str:
    """The path a capture goes by in the journal: relative to the inbox, or absolute when outside it."""
    absolute = Path(os.path.abspath(path))
    try:
        name = absolute.relative_to(os.path.abspath(inbox)).as_posix()
    except ValueError:
        name = absolute.as_posix()
    # Undecodable name bytes (rejected as bad_name) shown as \xNN: the journal stores text.
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def read_capture(path: Path, settings: InboxSettings, *, root: Path | None = None) -> Capture:
    """Read and parse the capture at `path`.

    `root` (default: the inbox) is the folder a symlink must not lead out of.
    Raises Rejection (a CaptureRejected) or CaptureVanished.
    """
    path = Path(path)
    fmt = DOCUMENT_FORMATS.get(path.suffix.lower(), path.suffix.lower().lstrip("."))
    data, info = _read_bytes(path, settings, (root or settings.path), fmt)
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix.lower() in DOCUMENT_FORMATS:
        body, metadata = _convert(fmt, data, settings)
    else:
        parse = {"md": _parse_markdown, "json": _parse_json}.get(fmt, _parse_text)
        body, metadata = parse(_decode(data))
    dated = note_date(metadata) or datetime.fromtimestamp(int(info.st_mtime), UTC).strftime(ISO_SECONDS_FORMAT)
    return Capture(
        path=path, text=body, sha256=digest, format=fmt, size=len(data), metadata=metadata, captured_at=dated
    )


def note_date(metadata: Mapping[str, Any]) -> str | None:
    """The capture's own date as its metadata writes it: the first of DATE_KEYS
    whose value reads as an ISO-8601 date or time (2024-03-05, 2024-03-05T09:30,
    2024-03-05T09:30:00+01:00, ...Z) with a four-digit year; None when none does
    (a value such as "last Tuesday" is not a date: the file's mtime is taken)."""
    for key in DATE_KEYS:
        value = metadata.get(key)
        if not isinstance(value, str):
            continue
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            continue
        if moment.year >= 1000:
            return value.strip()
    return None


# ---------------------------------------------------------------- the file


def _read_bytes(path: Path, settings: InboxSettings, root: Path, fmt: str) -> tuple[bytes, os.stat_result]:
    info = _lstat(path)
    target = path
    if stat.S_ISLNK(info.st_mode):
        target = _follow_link(path)
        info = _lstat(target)
    _check_inside(path, target, root)
    _check_name(path)
    if not stat.S_ISREG(info.st_mode):
        raise Rejection("not_regular", f"not a regular file ({_kind(info.st_mode)})")
    extensions = tuple(e.lower() for e in settings.extensions)
    if path.suffix.lower() not in extensions:
        shown = path.suffix or "(none)"
        raise Rejection(
            "unknown_extension",
            f"unknown extension {shown}: captures are {', '.join(extensions)}",
            hint=_HINTS["unknown_extension"].format(extensions=", ".join(extensions)),
        )
    limit = settings.max_bytes_for(fmt)
    _check_size(info.st_size, limit, fmt)
    data = _read_regular(target, info, limit, root)
    _check_size(len(data), limit, fmt)
    return data, info


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except FileNotFoundError as exc:
        raise CaptureVanished(f"{path} vanished before it was read") from exc
    except OSError as exc:
        raise Rejection("not_regular", f"cannot be read: {exc.strerror}", hint="Check the file's permissions.") from exc


def _follow_link(path: Path) -> Path:
    try:
        return path.resolve(strict=True)
    except FileNotFoundError as exc:
        if not os.path.lexists(path):
            raise CaptureVanished(f"{path} vanished before it was read") from exc
        raise Rejection("broken_symlink", f"symlink to {os.readlink(path)!r}, which does not exist") from exc
    except (OSError, RuntimeError) as exc:  # a loop
        raise Rejection("broken_symlink", f"symlink that cannot be resolved ({exc})") from exc


def _check_inside(path: Path, target: Path, root: Path) -> None:
    real_root = root.resolve()
    try:
        real = target.resolve() if target is not path else path.parent.resolve() / path.name
    except (OSError, RuntimeError) as exc:  # a folder on the way was swapped or removed meanwhile
        raise CaptureVanished(f"{path} changed before it was read ({exc})") from exc
    if not real.is_relative_to(real_root):
        raise Rejection("symlink_outside", f"leads outside the inbox, to {str(real)!r}")


def _check_name(path: Path) -> None:
    # Python holds undecodable name bytes as lone surrogates, which neither the
    # journal nor Neo4j can store: such a name is refused like undecodable text.
    name = path.name
    if _SURROGATE.search(name):
        shown = os.fsencode(name).decode("utf-8", "backslashreplace")
        raise Rejection("bad_name", f"the file name {shown!r} is not valid UTF-8")


def _kind(mode: int) -> str:
    kinds = {
        stat.S_ISFIFO: "a FIFO",
        stat.S_ISDIR: "a directory",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((name for test, name in kinds.items() if test(mode)), "not a file")


def _check_size(size: int, max_bytes: int, fmt: str) -> None:
    if size > max_bytes:
        key = f"inbox.format_max_bytes.{fmt}" if fmt in DOCUMENT_FORMATS.values() else "inbox.max_bytes"
        raise Rejection(
            "too_large",
            f"too large: {size} bytes, the limit is {max_bytes} ({key})",
            hint=f"Split the capture into smaller files, or raise {key}.",
        )


def _opened_path(fd: int) -> Path | None:
    """Where an open file really is (Linux /proc), None where that cannot be told."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def _read_regular(target: Path, info: os.stat_result, max_bytes: int, root: Path) -> bytes:
    # O_NONBLOCK: if a FIFO was swapped in after lstat, open must not block.
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(target, flags)
    except FileNotFoundError as exc:
        raise CaptureVanished(f"{target} vanished before it was read") from exc
    except OSError as exc:  # ELOOP: swapped for a symlink; EACCES: permissions
        raise CaptureVanished(f"{target} changed before it was read ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as handle:
        opened = os.fstat(handle.fileno())
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            raise CaptureVanished(f"{target} was replaced while it was read")
        # O_NOFOLLOW guards the last name only: a folder on the way swapped for a symlink
        # (after lstat and the inside check) is caught by where the open file really is.
        # Forgotten, not failed: moving that path would move the outside file.
        really = _opened_path(handle.fileno())
        if really is not None and not really.is_relative_to(root.resolve()):
            raise CaptureVanished(f"{target} was swapped for a file outside the inbox while it was read")
        return handle.read(max_bytes + 1)


def _decode(data: bytes) -> str:
    if not data:
        raise Rejection("empty", "empty file")
    offset = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 byte order mark
    try:
        text = data[offset:].decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + offset
        line = data[:at].count(b"\n") + 1
        raise Rejection("invalid_utf8", f"not valid UTF-8: byte {at} (line {line}) is 0x{data[at]:02x}") from exc
    nul = text.find("\x00")
    if nul >= 0:
        raise Rejection("binary", f"binary content: a NUL byte at byte {len(text[:nul].encode()) + offset}")
    return text


def _require_text(text: str, what: str) -> str:
    if not text.strip():
        raise Rejection("empty", f"{what} contains only whitespace" if text else f"{what} is empty")
    return text


# ---------------------------------------------------------------- formats


def _convert(fmt: str, data: bytes, settings: InboxSettings) -> tuple[str, dict[str, Any]]:
    """A document's text and metadata, from its converter in a child process."""
    if not data:
        raise Rejection("empty", "empty file")
    limits = Limits(
        max_text_chars=settings.max_text_chars,
        max_bytes={"txt": settings.max_bytes, "md": settings.max_bytes, **settings.format_max_bytes},
    )
    try:
        converted = convert_isolated(
            fmt, data, limits, timeout_s=settings.convert_timeout_s, memory_bytes=settings.convert_memory_mb * 2**20
        )
    except ConversionRefused as exc:
        raise Rejection(exc.code, exc.reason, hint=exc.hint or None) from None
    metadata = dict(converted.metadata)
    _require_storable({"text": converted.text, **metadata}, "corrupt", "the converted document")
    return _require_text(converted.text, "the converted text"), metadata


def _parse_text(text: str) -> tuple[str, dict[str, Any]]:
    return _require_text(text, "the file"), {}


def _parse_markdown(text: str) -> tuple[str, dict[str, Any]]:
    body, metadata = split_front_matter(text)
    return _require_text(body, "the file" if body is text else "the text after the front matter"), metadata


def split_front_matter(text: str) -> tuple[str, dict[str, Any]]:
    """Markdown's text after its front matter, and the front matter as metadata (the
    text itself and {} when there is none); Rejection (bad_front_matter) for bad YAML."""
    match = _FRONT_MATTER.match(text)
    if match is None:
        return text, {}
    if len(match["yaml"]) > MAX_FRONT_MATTER_CHARS:
        raise Rejection(
            "bad_front_matter",
            f"front matter is too large ({len(match['yaml'])} characters, the limit is {MAX_FRONT_MATTER_CHARS})",
        )
    try:
        loaded = yaml.load(match["yaml"], Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 2}" if mark is not None else ""  # +1 for the opening ---, +1 1-based
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise Rejection("bad_front_matter", f"front matter is not valid YAML{where}: {problem}") from exc
    except RecursionError:
        raise Rejection("bad_front_matter", "front matter is nested too deep") from None
    except (ValueError, OverflowError, AttributeError, TypeError) as exc:
        # PyYAML's constructors raise these for values its resolver let through
        # (2001-13-45, a 5,000-digit int, "!!timestamp x").
        raise Rejection("bad_front_matter", f"front matter holds a value that cannot be read: {exc}") from None
    if not isinstance(loaded, dict):
        return text, {}
    metadata = _json_safe(loaded, [MAX_METADATA_NODES])
    _require_storable(metadata, "bad_front_matter", "front matter")
    return text[match.end() :], metadata


def _json_safe(value: Any, budget: list[int], depth: int = 0) -> Any:
    """YAML values as JSON data: dates as ISO strings, keys as strings; bounded in size and depth."""
    budget[0] -= 1
    if budget[0] < 0:
        raise Rejection("bad_front_matter", f"front matter is too large (over {MAX_METADATA_NODES} values)")
    if depth > MAX_METADATA_DEPTH:
        raise Rejection("bad_front_matter", f"front matter is nested too deep (over {MAX_METADATA_DEPTH} levels)")
    if isinstance(value, dict):
        return {str(k): _json_safe(v, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v, budget, depth + 1) for v in value]
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):  # .nan, .inf: not JSON
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class _JsonCapture(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    text: str
    source: str | None = None
    captured_at: str | None = None
    tags: list[str] = []

    @field_validator("captured_at")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError("must be an ISO-8601 date or time, e.g. 2026-01-31T09:30:00Z") from None
        return value


def _parse_json(text: str) -> tuple[str, dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise Rejection("bad_json", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError:
        raise Rejection("bad_json", "not valid JSON: nested too deep") from None
    except ValueError as exc:  # a number over Python's int-to-str digit limit
        raise Rejection("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Rejection("bad_json", f"a JSON capture must be an object, not {type(data).__name__}")
    try:
        capture = _JsonCapture.model_validate(data)
    except ValidationError as exc:
        raise Rejection("bad_json", "JSON capture: " + validation_line(exc, _describe_json_error)) from None
    metadata = capture.model_dump(exclude={"text"}, exclude_none=True)
    if not capture.tags:
        metadata.pop("tags", None)
    _require_storable({"text": capture.text, **metadata}, "bad_json", "JSON capture")
    return _require_text(capture.text, "'text'"), metadata


def _require_storable(value: Any, code: str, what: str) -> None:
    """Reject data the journal (UTF-8 JSON) could not store: lone surrogates, over-long numbers."""
    try:
        json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end].encode("unicode_escape").decode("ascii")
        raise Rejection(code, f"{what} holds an escaped lone surrogate ({bad}), which is not text") from None
    except ValueError as exc:  # a hex int (0xfff...) past the int-to-str digit limit in decimal
        raise Rejection(code, f"{what} holds a number too large to store ({exc})") from None


def _describe_json_error(error: ErrorDetails) -> str:
    key = error_key(error)
    if error["type"] == "extra_forbidden":
        return f"unknown key {key!r} (allowed: text, source, captured_at, tags)"
    if error["type"] == "missing":
        return f"missing key {key!r}"
    return f"{key!r} {error_message(error)}"
