"""Real document files made with the libraries themselves (no tests here): PDFs
written with pypdf, .docx with python-docx, web pages and e-mails as text, for
the capture tests, the fuzz targets and benchmarks/convert_formats.py.

The text of the sample documents comes from config/eval/real.jsonl (passages
written by others, with their licences in config/eval/README.md), so the
converters are measured on prose nobody wrote for them.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from html import escape
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Helvetica at 10 pt: about 90 characters fit 6.5 inches; 13 pt leading, 52 lines a page.
_LINE_CHARS = 90
_PAGE_LINES = 52


def real_paragraphs(count: int, *, start: int = 0) -> list[str]:
    """`count` passages of config/eval/real.jsonl from `start`, each as one paragraph."""
    rows = [json.loads(line) for line in (ROOT / "config/eval/real.jsonl").read_text(encoding="utf-8").splitlines()]
    picked = [rows[(start + i) % len(rows)]["text"] for i in range(count)]
    return [" ".join(text.split()) for text in picked]


@dataclass(frozen=True)
class Document:
    """What a sample file says: its paragraphs and the metadata it carries."""

    paragraphs: tuple[str, ...]
    title: str = "Notes from the home lab"
    author: str = "Grete Lindqvist"
    date: datetime | None = None
    url: str = ""
    # For web pages: what surrounds the article (menus, cookie banner, footer).
    boilerplate: tuple[str, ...] = field(
        default=(
            "Home",
            "Blog",
            "About",
            "Contact",
            "Subscribe to our newsletter",
            "We use cookies to improve your experience. Accept all cookies",
            "Copyright 2026 Example Media. All rights reserved.",
            "Related posts",
            "Share on Mastodon",
        )
    )

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)


# ---------------------------------------------------------------- PDF


def _pdf_string(line: str) -> bytes:
    raw = line.encode("cp1252", "replace")
    return b"(" + raw.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def _pdf_pages(paragraphs: Sequence[str], width: int = _LINE_CHARS, per_page: int = _PAGE_LINES) -> list[list[str]]:
    lines: list[str] = []
    for paragraph in paragraphs:
        lines.extend(textwrap.wrap(paragraph, width) or [""])
        lines.append("")
    return [lines[i : i + per_page] for i in range(0, max(len(lines), 1), per_page)]


def _gapped(line: str) -> bytes:
    # Words placed by a displacement instead of a space character, as TeX and many
    # typesetters write them: the reader must infer the spaces from the gaps.
    return b"[" + b" -300 ".join(_pdf_string(word) for word in line.split(" ")) + b"] TJ"


def _text_content(lines: Sequence[str], layout: str) -> bytes:
    if layout == "columns":
        # Two columns, written row by row (left, right, left, ...) as some generators
        # do: the reader must tell the columns apart to keep the order.
        half = (len(lines) + 1) // 2
        left, right = lines[:half], lines[half:]
        ops = []
        for row, text in enumerate(left):
            ops.append(b"1 0 0 1 54 %d Tm " % (740 - 13 * row) + _pdf_string(text) + b" Tj")
            if row < len(right):
                ops.append(b"1 0 0 1 320 %d Tm " % (740 - 13 * row) + _pdf_string(right[row]) + b" Tj")
        return b"BT /F1 10 Tf " + b" ".join(ops) + b" ET"
    show = _gapped if layout == "gaps" else (lambda line: _pdf_string(line) + b" Tj")
    return b"BT /F1 10 Tf 13 TL 72 740 Td " + b" T* ".join(show(line) for line in lines) + b" ET"


def _pdf_date(moment: datetime) -> str:
    offset = moment.strftime("%z")
    zone = "Z" if offset in ("", "+0000") else f"{offset[:3]}'{offset[3:]}'"
    return "D:" + moment.strftime("%Y%m%d%H%M%S") + zone


def pdf_bytes(
    document: Document, *, password: str | None = None, image_only: bool = False, layout: str = "lines"
) -> bytes:
    """A PDF whose pages show the document's paragraphs in Helvetica (a real text
    layer), with Title, Author and CreationDate. `layout`: "lines" (one string a
    line), "gaps" (words spaced by displacements, no space characters) or
    "columns" (two columns written row by row). `image_only` draws a grey image
    instead of text (a scan without OCR); `password` encrypts it (AES-128)."""
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject, NumberObject

    writer = PdfWriter()
    font = DictionaryObject(
        {
            NameObject("/Type"): NameObject("/Font"),
            NameObject("/Subtype"): NameObject("/Type1"),
            NameObject("/BaseFont"): NameObject("/Helvetica"),
            NameObject("/Encoding"): NameObject("/WinAnsiEncoding"),
        }
    )
    width, per_page = (44, 2 * _PAGE_LINES) if layout == "columns" else (_LINE_CHARS, _PAGE_LINES)
    for lines in _pdf_pages(document.paragraphs, width, per_page):
        page = writer.add_blank_page(612, 792)
        resources = DictionaryObject({NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        if image_only:
            image = DecodedStreamObject()
            image.set_data(bytes(range(64)) * 64)
            image.update(
                {
                    NameObject("/Type"): NameObject("/XObject"),
                    NameObject("/Subtype"): NameObject("/Image"),
                    NameObject("/Width"): NumberObject(64),
                    NameObject("/Height"): NumberObject(64),
                    NameObject("/ColorSpace"): NameObject("/DeviceGray"),
                    NameObject("/BitsPerComponent"): NumberObject(8),
                }
            )
            resources[NameObject("/XObject")] = DictionaryObject({NameObject("/Im1"): writer._add_object(image)})
            content = b"q 468 0 0 600 72 120 cm /Im1 Do Q"
        else:
            content = _text_content(lines, layout)
        page[NameObject("/Resources")] = resources
        stream = DecodedStreamObject()
        stream.set_data(content)
        page.replace_contents(stream)
    info = {"/Title": document.title, "/Author": document.author}
    if document.date is not None:
        info["/CreationDate"] = _pdf_date(document.date)
    writer.add_metadata(info)
    if password is not None:
        writer.encrypt(user_password=password, owner_password=None, algorithm="AES-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------- .docx


def docx_bytes(document: Document, *, table: Sequence[Sequence[str]] = ()) -> bytes:
    """A Word file: a title heading, the paragraphs (every third one under its own
    heading), an optional table, and the core properties title, author, created."""
    import docx

    word = docx.Document()
    word.add_heading(document.title, level=1)
    for i, paragraph in enumerate(document.paragraphs):
        if i and i % 3 == 0:
            word.add_heading(f"Part {i // 3 + 1}", level=2)
        word.add_paragraph(paragraph)
    if table:
        grid = word.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    word.core_properties.title = document.title
    word.core_properties.author = document.author
    if document.date is not None:
        word.core_properties.created = document.date
    buffer = io.BytesIO()
    word.save(buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------- web pages

# Around the article: teasers of other posts and reader comments, full sentences
# that a converter must leave out.
_TEASERS = "".join(
    f'<div class="teaser"><h3><a href="/post/{i}">{title}</a></h3><p>{body}</p></div>'
    for i, (title, body) in enumerate(
        [
            (
                "Ten tips for your router",
                "Most home routers ship with settings that favour convenience over safety, "
                "and a few minutes in the admin page can change that for good.",
            ),
            (
                "Why we moved to IPv6",
                "After years of double NAT and port forwarding headaches, the office network "
                "finally runs dual stack, and the printers were the hardest part.",
            ),
            (
                "A quiet fan for the NAS",
                "The stock fan of the four-bay enclosure was louder than the drives, so we "
                "measured three replacements with a cheap decibel meter.",
            ),
        ]
    )
)
_COMMENTS = "".join(
    f'<div class="comment"><p class="who">{who}</p><p>{body}</p></div>'
    for who, body in [
        ("Marta", "Thanks for writing this up, it saved me an afternoon of reading forum threads."),
        ("deploy_bot", "Has anyone tried this with the older firmware? Mine refuses to boot after the update."),
        ("Ken", "Great post. I would add that backups deserve the same attention as the setup itself."),
    ]
)


def html_bytes(document: Document) -> bytes:
    """A saved blog page: meta tags (title, author, published time, canonical URL),
    a menu, a cookie banner, the article, a sidebar of related posts and a footer."""
    menu = "".join(
        f'<li><a href="/{escape(item.lower())}">{escape(item)}</a></li>' for item in document.boilerplate[:4]
    )
    article = "".join(f"<p>{escape(p)}</p>" for p in document.paragraphs)
    published = document.date.isoformat() if document.date is not None else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{escape(document.title)} | Example Media</title>
<meta name="author" content="{escape(document.author)}">
<meta property="og:title" content="{escape(document.title)}">
<meta property="article:published_time" content="{published}">
<link rel="canonical" href="{escape(document.url)}">
<style>body {{ font-family: sans-serif }}</style><script>var tracking = "do not extract me";</script>
</head><body>
<header><nav><ul>{menu}</ul></nav><div class="cookie-banner">{escape(document.boilerplate[5])}</div></header>
<main><article><h1>{escape(document.title)}</h1>
<p class="byline">By {escape(document.author)}</p>
{article}</article></main>
<aside><h2>{escape(document.boilerplate[7])}</h2>{_TEASERS}<p>{escape(document.boilerplate[4])}</p></aside>
<section class="comments"><h2>3 comments</h2>{_COMMENTS}</section>
<footer><p>{escape(document.boilerplate[6])}</p><p>{escape(document.boilerplate[8])}</p></footer>
</body></html>
""".encode()


# ---------------------------------------------------------------- e-mail


@dataclass(frozen=True)
class Attachment:
    filename: str
    content: bytes
    mime: str = "application/octet-stream"


def eml_bytes(
    document: Document,
    *,
    sender: str = "Grete Lindqvist <grete@example.org>",
    to: str = "Farid Haddad <farid@example.org>",
    attachments: Sequence[Attachment] = (),
    html_alternative: bool = False,
    charset: str = "utf-8",
) -> bytes:
    """An e-mail as a mail client saves it (.eml): Subject, From, To, Date, a text
    body (and an HTML alternative), and attachments."""
    message = EmailMessage()
    message["Subject"] = document.title
    message["From"] = sender
    message["To"] = to
    if document.date is not None:
        message["Date"] = format_datetime(document.date)
    message.set_content(document.text + "\n", charset=charset)
    if html_alternative:
        message.add_alternative("".join(f"<p>{escape(p)}</p>" for p in document.paragraphs), subtype="html")
    for attachment in attachments:
        maintype, subtype = attachment.mime.split("/", 1)
        message.add_attachment(attachment.content, maintype=maintype, subtype=subtype, filename=attachment.filename)
    return message.as_bytes()
