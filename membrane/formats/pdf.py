"""PDF: the text layer, read with pdfminer.six (layout analysis keeps columns
apart), and the document information (Title, Author, CreationDate), with the
page count.

Refused, each with its own code: an encrypted PDF that needs a password
(`encrypted`), one whose pages hold no text (`no_text_layer`: a scan needs OCR
first), one cut short (`truncated`: no %%EOF in its last KiB, as readers
require), and one pdfminer cannot parse (`corrupt`). A PDF protected only by
an owner password (printing, copying) opens with the empty user password and
is read.
"""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from membrane.formats.base import (
    ConversionRefused,
    Converted,
    Limits,
    clean_text,
    clean_value,
    iso_date,
    refuse_missing,
    too_long,
)

__all__ = ["convert"]

# A line break inside a paragraph is the page's layout, not the writer's: it becomes a space,
# so a sentence reaches the model (and the chunker) whole. Paragraphs stay apart.
# A line ending in a hyphen after a letter continues the word (Ibus-/typing-booster).
_LINE_BREAK = re.compile(r"(?<=\S)[ \t]*\n(?!\n)[ \t]*(?=\S)")
_HYPHEN_BREAK = re.compile(r"(?<=\w-)[ \t]*\n(?!\n)[ \t]*(?=\w)")
_OCR_HINT = "Run OCR on it first (for example `ocrmypdf in.pdf out.pdf`), then put the result in the inbox."
# D:YYYYMMDDHHmmSS with an optional offset (Z, +HH'mm', -HH'mm); every part after the year optional.
_PDF_DATE = re.compile(
    r"^D?:?(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?P<z>Z|[+-]\d{2}'?(?:\d{2}'?)?)?"
)


def convert(data: bytes, limits: Limits) -> Converted:
    try:
        from pdfminer.converter import TextConverter
        from pdfminer.layout import LAParams
        from pdfminer.pdfdocument import PDFDocument
        from pdfminer.pdfinterp import PDFPageInterpreter, PDFResourceManager
        from pdfminer.pdfpage import PDFPage
        from pdfminer.pdfparser import PDFParser
    except ImportError:
        raise refuse_missing("pdf", "pdfminer.six") from None
    if b"%%EOF" not in data[-1024:]:
        raise ConversionRefused(
            "truncated",
            "the PDF is cut short: it does not end with %%EOF",
            hint="Save or download the PDF again, then move it back to the inbox.",
        )
    try:
        document = PDFDocument(PDFParser(io.BytesIO(data)), password="")
    except MemoryError:  # the child reports it with the limit
        raise
    except Exception as exc:  # noqa: BLE001 - pdfminer's errors are not one tree; this is its boundary
        raise _refusal(exc) from None
    out = io.StringIO()
    manager = PDFResourceManager()
    device = TextConverter(manager, out, laparams=LAParams())
    interpreter = PDFPageInterpreter(manager, device)
    pages = 0
    try:
        for page in PDFPage.create_pages(document):
            interpreter.process_page(page)
            pages += 1
            if out.tell() > 2 * limits.max_text_chars:  # whitespace aside, far over the cap: stop reading
                raise too_long("PDF", f"over {out.tell():,}", limits)
    except (ConversionRefused, MemoryError):  # MemoryError: the child reports it with the limit
        raise
    except Exception as exc:  # noqa: BLE001 - the same boundary, while reading pages
        raise _refusal(exc) from None
    finally:
        device.close()
    text = _LINE_BREAK.sub(" ", _HYPHEN_BREAK.sub("", clean_text(out.getvalue())))
    if not text:
        raise ConversionRefused(
            "no_text_layer",
            f"the PDF has no text layer: its {pages} page(s) hold no text (a scan or images), so it needs OCR",
            hint=_OCR_HINT,
        )
    return Converted(text, {**_information(document), "pages": pages})


def _refusal(exc: Exception) -> ConversionRefused:
    name = type(exc).__name__
    if name in ("PDFPasswordIncorrect", "PDFEncryptionError", "PDFEncryptionWarning"):
        return ConversionRefused(
            "encrypted",
            "the PDF is encrypted and needs a password to open",
            hint="Save an unprotected copy (print to PDF), then put that in the inbox.",
        )
    if isinstance(exc, RecursionError):
        return ConversionRefused("corrupt", "the PDF is not readable: its objects nest without end")
    detail = str(exc).strip()[:200] or name
    return ConversionRefused(
        "corrupt",
        f"the PDF is not readable ({name}: {detail})",
        hint="Save or export the PDF again, then move it back to the inbox.",
    )


def _information(document: Any) -> dict[str, Any]:
    from pdfminer.pdftypes import resolve1
    from pdfminer.utils import decode_text

    info: dict[str, Any] = {}
    for entry in document.info or []:
        for key, value in dict(entry).items():
            value = resolve1(value)
            info[str(key)] = decode_text(value) if isinstance(value, bytes) else value
    out: dict[str, Any] = {}
    for key, name in (("Title", "title"), ("Author", "author"), ("Subject", "subject")):
        if isinstance(info.get(key), str) and info[key].strip():
            out[name] = clean_value(info[key])
    moment = _pdf_date(info.get("CreationDate"))
    if moment is not None:
        out["date"] = moment
    return out


def _pdf_date(value: Any) -> str | None:
    """A PDF date string (D:20240305093000+01'00') as ISO-8601 text, None if it is none."""
    match = _PDF_DATE.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        return None
    year, month, day, hour, minute, second = (
        int(match[k] or default) for k, default in (("y", 0), ("mo", 1), ("d", 1), ("h", 0), ("mi", 0), ("s", 0))
    )
    zone = match["z"]
    try:
        if match["h"] is None:
            return iso_date(datetime(year, month, day).date())
        tz: timezone | None = None
        if zone == "Z":
            tz = UTC
        elif zone:
            digits = zone.replace("'", "")
            sign = -1 if digits[0] == "-" else 1
            tz = timezone(sign * timedelta(hours=int(digits[1:3]), minutes=int(digits[3:5] or 0)))
        return iso_date(datetime(year, month, day, hour, minute, second, tzinfo=tz))
    except ValueError:  # month 13, an offset of 25 hours
        return None
