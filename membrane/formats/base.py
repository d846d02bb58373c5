"""What every converter shares: its result (`Converted`), its refusal
(`ConversionRefused`), the limits it works under, and the clean-up every
converted text and metadata value goes through."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from membrane.errors import CaptureRejected

__all__ = [
    "EXTRA_HINT",
    "ConversionRefused",
    "Converted",
    "Limits",
    "clean_text",
    "clean_value",
    "iso_date",
    "refuse_missing",
    "too_long",
]

# Shown whenever a converter's library is not installed.
EXTRA_HINT = "Install MemBrane's formats extra (pip install 'membrane[formats]'), then move the file back to the inbox."

# A metadata value longer than this is cut: a title is a line, not a document.
MAX_VALUE_CHARS = 1_000
# C0 control characters other than tab, newline and carriage return, and lone surrogates
# (a broken ToUnicode map): neither is text any store accepts.
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*(?:\n[ \t\r\f\v]*)+")


class ConversionRefused(CaptureRejected):
    """A document a converter cannot turn into text; `code` names the reason
    (capture.Rejection carries the same codes into failed/)."""

    def __init__(self, code: str, message: str, *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.code = code


@dataclass(frozen=True)
class Converted:
    """A document as text, with the metadata it carries (title, author, date as
    ISO-8601 text, source URL; each format adds its own, e.g. an e-mail's from/to)."""

    text: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Limits:
    """What a converter may produce and read: the converted text's length, and,
    for the files inside an e-mail, each format's size limit in bytes."""

    max_text_chars: int = 1_000_000
    max_bytes: Mapping[str, int] = field(default_factory=dict)
    # Uncompressed bytes a .docx may declare: more is a zip bomb.
    max_unzipped_bytes: int = 200_000_000

    def bytes_for(self, fmt: str) -> int:
        return int(self.max_bytes.get(fmt, 0))


def refuse_missing(fmt: str, module: str) -> ConversionRefused:
    """The refusal for a converter whose library is not installed."""
    return ConversionRefused(
        "missing_extra",
        f"reading .{fmt} files needs {module}, from MemBrane's formats extra, which is not installed",
        hint=EXTRA_HINT,
    )


def too_long(what: str, chars: str, limits: Limits) -> ConversionRefused:
    """The refusal for a converted text past the cap (`chars`: how many, as words or digits)."""
    return ConversionRefused(
        "text_too_long",
        f"the {what}'s text is too long: {chars} characters, the limit is "
        f"{limits.max_text_chars:,} (inbox.max_text_chars)",
        hint="Split the document into smaller files, or raise inbox.max_text_chars.",
    )


def clean_text(text: str) -> str:
    """Converted text as the journal stores it: control characters and lone
    surrogates dropped, runs of blank lines made one, ends trimmed."""
    text = _UNSAFE.sub("", text.replace("\r\n", "\n").replace("\f", "\n\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def clean_value(value: Any) -> Any:
    """A metadata value as plain, storable JSON: strings cleaned and cut, lists and maps walked."""
    if isinstance(value, str):
        return " ".join(_UNSAFE.sub("", value).split())[:MAX_VALUE_CHARS]
    if isinstance(value, (list, tuple)):
        return [clean_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): clean_value(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return clean_value(str(value))


def iso_date(value: datetime | date | None) -> str | None:
    """A document's date as ISO-8601 text, as the document gives it (its offset
    kept; a naive time stays naive); None for none, or for a year before 1000."""
    if value is None or value.year < 1000:
        return None
    if isinstance(value, datetime) and value.tzinfo is not None and value.utcoffset() is not None:
        offset = value.utcoffset()
        if offset is not None and not offset:
            return value.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"
    return value.isoformat()
