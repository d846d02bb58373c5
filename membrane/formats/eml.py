"""E-mail saved as .eml (RFC 5322), read with the standard library: Subject,
From, To, Cc and Date, the text body (the plain part, else the HTML part's
main text), and the attachments.

Attachments join the e-mail's own capture: each one of a format MemBrane
reads (.txt, .md, .pdf, .html, .docx, .eml, within that format's size limit)
is converted and appended under an "Attachment: NAME" line, and every
attachment is listed in the metadata (name, type, bytes, and whether it was
read or why not). One capture, so the facts from a report sent by mail carry
the mail's date and sender, and forgetting the mail forgets them too; nothing
is written into the inbox (a vault is never written to). A forwarded e-mail
inside an e-mail is read to MAX_DEPTH levels.

Refused: a file with none of the headers From, To, Subject, Date (`corrupt`:
not an e-mail), and text that is not what it declares (`bad_encoding`: an
unknown charset, bytes invalid in the declared one, or a header whose bytes
are valid in no charset it declares). Decoding is strict, as for .txt captures: a replacement character
in place of a name would put a wrong name into the graph.
"""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage, Message
from typing import Any

from membrane.formats.base import ConversionRefused, Converted, Limits, clean_text, clean_value, iso_date, too_long

__all__ = ["MAX_DEPTH", "convert"]

MAX_DEPTH = 3
MAX_LISTED = 100
_HEADERS = ("Subject", "From", "To", "Cc", "Date")
# Attachment formats by file name, then by content type.
_BY_EXTENSION = {
    ".txt": "txt",
    ".md": "md",
    ".pdf": "pdf",
    ".html": "html",
    ".htm": "html",
    ".docx": "docx",
    ".eml": "eml",
}
_BY_TYPE = {
    "text/plain": "txt",
    "text/markdown": "md",
    "application/pdf": "pdf",
    "text/html": "html",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "message/rfc822": "eml",
}
_ENCODING_HINT = "Save the e-mail again from the mail client (as .eml), then move it back to the inbox."


def convert(data: bytes, limits: Limits, *, depth: int = 0) -> Converted:
    try:
        message = email.message_from_bytes(data, policy=policy.default)
    except MemoryError:  # the child reports it with the limit
        raise
    except Exception as exc:  # noqa: BLE001 - the email package's parser errors; this is their boundary
        raise ConversionRefused("corrupt", f"not a readable e-mail ({type(exc).__name__}: {exc})"[:300]) from None
    assert isinstance(message, EmailMessage)
    headers = _headers(message)
    if not any(headers.get(name.lower()) for name in _HEADERS):
        raise ConversionRefused(
            "corrupt",
            "not an e-mail: it has none of the headers From, To, Subject, Date",
            hint="Save the message from the mail client as .eml, then move it back to the inbox.",
        )
    sections = ["\n".join(f"{name}: {headers[name.lower()]}" for name in _HEADERS if headers.get(name.lower()))]
    body = message.get_body(preferencelist=("plain", "html"))
    if body is not None:
        sections.append(_body_text(body, limits))
    attachments: list[dict[str, Any]] = []
    size = sum(len(s) for s in sections)
    for part in message.iter_attachments():
        listed, text = _attachment(part, limits, depth)
        if len(attachments) < MAX_LISTED:
            attachments.append(listed)
        if text:
            sections.append(f"Attachment: {listed['name']}\n\n{text}")
            size += len(sections[-1])
            if size > 2 * limits.max_text_chars:
                raise too_long("e-mail", f"over {size:,}", limits)
    metadata: dict[str, Any] = {key: headers[key] for key in ("from", "to", "cc") if headers.get(key)}
    if headers.get("subject"):
        metadata["title"] = headers["subject"]
    moment = _date(message)
    if moment is not None:
        metadata["date"] = moment
    if attachments:
        metadata["attachments"] = attachments
    return Converted(clean_text("\n\n".join(s for s in sections if s.strip())), metadata)


def _headers(message: Message) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in _HEADERS:
        try:
            value = message.get(name)
        except MemoryError:  # the child reports it with the limit
            raise
        except Exception as exc:  # noqa: BLE001 - a header the parser cannot model
            raise ConversionRefused(
                "bad_encoding", f"the {name} header cannot be read ({exc})"[:300], hint=_ENCODING_HINT
            ) from None
        if value is None:
            continue
        text = str(value)
        # The parser puts U+FFFD (or, for some headers, a surrogate) where bytes were not valid in their charset.
        if "\ufffd" in text or any("\udc80" <= char <= "\udcff" for char in text):
            raise ConversionRefused(
                "bad_encoding",
                f"the {name} header holds bytes that are not valid text in any charset it declares",
                hint=_ENCODING_HINT,
            )
        out[name.lower()] = clean_value(text)
    return out


def _date(message: Message) -> str | None:
    header = message.get("Date")
    moment = getattr(header, "datetime", None)
    return iso_date(moment) if moment is not None else None


def _decoded(part: Message, what: str) -> str:
    """A text part's content, decoded strictly in the charset it declares (UTF-8 when it declares none)."""
    payload = part.get_payload(decode=True)
    raw = payload if isinstance(payload, bytes) else b""
    charset = part.get_content_charset() or "utf-8"
    try:
        return raw.decode(charset)
    except LookupError:
        raise ConversionRefused(
            "bad_encoding", f"the {what} declares the charset {charset!r}, which is unknown", hint=_ENCODING_HINT
        ) from None
    except UnicodeDecodeError as exc:
        raise ConversionRefused(
            "bad_encoding",
            f"the {what} is not valid {charset}: byte {exc.start} is 0x{raw[exc.start]:02x}",
            hint=_ENCODING_HINT,
        ) from None


def _body_text(part: Message, limits: Limits) -> str:
    text = _decoded(part, "text body")
    if part.get_content_type() == "text/html":
        from membrane.formats import html

        try:
            return html.convert(text, limits).text
        except ConversionRefused as exc:
            if exc.code != "empty":
                raise
            return ""
    return text


def _attachment(part: Message, limits: Limits, depth: int) -> tuple[dict[str, Any], str]:
    """The attachment as listed in the metadata, and its text ("" when it is not read)."""
    name = clean_value(part.get_filename() or "(unnamed)")
    content_type = part.get_content_type()
    fmt = _BY_EXTENSION.get(_suffix(name)) or _BY_TYPE.get(content_type)
    data = _attachment_bytes(part)
    listed: dict[str, Any] = {"name": name, "type": content_type, "bytes": len(data), "read": False}
    if fmt is None:
        listed["reason"] = "not a format MemBrane reads"
        return listed, ""
    limit = limits.bytes_for(fmt)
    if len(data) > limit:
        listed["reason"] = f"too large: {len(data):,} bytes, the .{fmt} limit is {limit:,} (inbox.format_max_bytes)"
        return listed, ""
    if fmt == "eml" and depth >= MAX_DEPTH:
        listed["reason"] = f"an e-mail nested more than {MAX_DEPTH} levels deep"
        return listed, ""
    try:
        text = _attachment_text(fmt, data, limits, depth)
    except ConversionRefused as exc:
        listed["reason"] = str(exc)
        return listed, ""
    listed["read"] = True
    return listed, text


def _attachment_bytes(part: Message) -> bytes:
    if part.get_content_type() == "message/rfc822":
        inner = part.get_payload()
        message = inner[0] if isinstance(inner, list) and inner else inner
        return message.as_bytes() if isinstance(message, Message) else b""
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def _attachment_text(fmt: str, data: bytes, limits: Limits, depth: int) -> str:
    if fmt in ("txt", "md"):
        try:
            return clean_text(data.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise ConversionRefused("invalid_utf8", "not UTF-8 text") from None
    if fmt == "eml":
        return convert(data, limits, depth=depth + 1).text
    from membrane.formats import convert_here

    return convert_here(fmt, data, limits).text


def _suffix(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""
