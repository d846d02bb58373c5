"""Web pages saved as HTML: the main content only, read with trafilatura
(menus, banners, teasers of other posts, comments and footers left out), with
the page's title, author, publication date and canonical URL.

The date is the one the page's metadata states (meta tags, JSON-LD, the
article's own markup), to the day, as trafilatura's htmldate reads it without
its "extensive search": that search guesses from the text and took
"Copyright 2026" in a footer for the publication date. HTML is read as a
browser reads it, leniently: a page cut short yields the text it holds. A
file with no main text (only navigation, or not a web page at all) is refused
(`empty`).
"""

from __future__ import annotations

from typing import Any

from membrane.formats.base import ConversionRefused, Converted, Limits, clean_text, clean_value, refuse_missing

__all__ = ["convert"]

_DATE_PARAMS = {"extensive_search": False, "original_date": True}


def convert(data: bytes | str, limits: Limits) -> Converted:
    """The page's main text and metadata; `data` is the file's bytes, or the
    text of an e-mail's HTML part (already decoded)."""
    try:
        import trafilatura
    except ImportError:
        raise refuse_missing("html", "trafilatura") from None
    if isinstance(data, bytes) and b"\x00" in data[:4096] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ConversionRefused("binary", "not a web page: binary content (a NUL byte near the start)")
    try:
        document = trafilatura.bare_extraction(
            data, with_metadata=True, include_comments=False, date_extraction_params=_DATE_PARAMS
        )
    except RecursionError:
        raise ConversionRefused("corrupt", "the web page is not readable: its elements nest too deep") from None
    except MemoryError:  # the child reports it with the limit
        raise
    except Exception as exc:  # noqa: BLE001 - trafilatura and lxml's errors; this is their boundary
        raise ConversionRefused(
            "corrupt", f"the web page is not readable ({type(exc).__name__}: {exc})"[:300]
        ) from None
    text = clean_text(getattr(document, "text", None) or "") if document is not None else ""
    if not text:
        raise ConversionRefused(
            "empty",
            "the web page holds no main text (only navigation and boilerplate, or no HTML at all)",
            hint="Save the article's page itself (not a menu or a redirect), then move it back to the inbox.",
        )
    return Converted(text, _metadata(document))


def _metadata(document: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attribute, key in (
        ("title", "title"),
        ("author", "author"),
        ("date", "date"),
        ("url", "source"),
        ("sitename", "site"),
    ):
        value = getattr(document, attribute, None)
        if isinstance(value, str) and value.strip():
            out[key] = clean_value(value)
    return out
