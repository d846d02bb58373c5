"""Word files (.docx): the body's paragraphs and tables in document order, read
with python-docx, and the core properties title, author and created.

The zip is checked before python-docx opens it: a file that is not a zip, or
is cut short (no central directory), is `corrupt`; one whose members declare
more than Limits.max_unzipped_bytes uncompressed, or more than 10,000 members,
is a `zip_bomb` (Python's zipfile stops a member at its declared size, so the
declared sizes bound what is inflated). Headers, footers, comments and
tracked deletions are left out. Core properties are read only when the file
has them: python-docx would otherwise make up a creation time of now.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

from membrane.formats import base
from membrane.formats.base import ConversionRefused, Converted, Limits

__all__ = ["convert"]

MAX_MEMBERS = 10_000
_CORRUPT_HINT = "Open the file in a word processor and save it again as .docx, then move it back to the inbox."


def convert(data: bytes, limits: Limits) -> Converted:
    try:
        import docx
    except ImportError:
        raise base.refuse_missing("docx", "python-docx") from None
    names = _check_zip(data, limits)
    try:
        word = docx.Document(io.BytesIO(data))
        parts: list[str] = []
        size = 0
        for block in _blocks(word):
            parts.append(block)
            size += len(block) + 1
            if size > 2 * limits.max_text_chars:
                raise base.too_long("Word file", f"over {size:,}", limits)
        metadata = _properties(word) if "docProps/core.xml" in names else {}
    except (ConversionRefused, MemoryError):  # MemoryError: the child reports it with the limit
        raise
    except RecursionError:
        raise ConversionRefused(
            "corrupt", "the Word file is not readable: its XML nests too deep", hint=_CORRUPT_HINT
        ) from None
    except Exception as exc:  # noqa: BLE001 - python-docx, lxml and zipfile errors; this is their boundary
        raise ConversionRefused(
            "corrupt", f"the Word file is not readable ({type(exc).__name__}: {exc})"[:300], hint=_CORRUPT_HINT
        ) from None
    text = base.clean_text("\n\n".join(parts))
    if not text:
        raise ConversionRefused(
            "empty",
            "the Word file holds no text",
            hint="Write some text into the document, then move it back to the inbox.",
        )
    return Converted(text, metadata)


def _check_zip(data: bytes, limits: Limits) -> set[str]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise ConversionRefused(
            "corrupt", f"not a readable Word file: the zip is damaged or cut short ({exc})"[:300], hint=_CORRUPT_HINT
        ) from None
    unzipped = sum(member.file_size for member in members)
    if len(members) > MAX_MEMBERS or unzipped > limits.max_unzipped_bytes:
        raise ConversionRefused(
            "zip_bomb",
            f"the Word file unpacks to {unzipped:,} bytes in {len(members):,} members, over the limit "
            f"of {limits.max_unzipped_bytes:,} bytes and {MAX_MEMBERS:,} members (a zip bomb, or not a document)",
            hint="Only ordinary Word documents are read; check where this file came from.",
        )
    names = {member.filename for member in members}
    if "word/document.xml" not in names:
        raise ConversionRefused(
            "corrupt",
            "not a Word document: the zip holds no word/document.xml",
            hint="Save the file as a Word document (.docx), then move it back to the inbox.",
        )
    return names


def _blocks(word: Any) -> Iterator[str]:
    """Paragraphs and tables in the order the body holds them; a table row as its cells joined by " | "."""
    from docx.table import Table

    for block in word.iter_inner_content():
        if isinstance(block, Table):
            for row in block.rows:
                cells = [" ".join(cell.text.split()) for cell in row.cells]
                yield " | ".join(cells)
        else:
            yield block.text


def _properties(word: Any) -> dict[str, Any]:
    core = word.core_properties
    out: dict[str, Any] = {}
    for value, key in ((core.title, "title"), (core.author, "author"), (core.subject, "subject")):
        if isinstance(value, str) and value.strip():
            out[key] = base.clean_value(value)
    created = base.iso_date(core.created)
    if created is not None:
        out["date"] = created
    return out
