"""Documents (PDF, web pages, Word files, e-mail): real files, made with the
libraries themselves (tests/support/documents.py), read through
capture.read_capture and its converter child, with every refusal reason."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from membrane.capture import Capture, Rejection, read_capture
from membrane.config import InboxSettings, Settings
from tests.support.documents import (
    Attachment,
    Document,
    docx_bytes,
    eml_bytes,
    html_bytes,
    pdf_bytes,
    real_paragraphs,
)

ROOT = Path(__file__).resolve().parents[1]
DATED = datetime(2024, 3, 5, 9, 30, tzinfo=timezone(timedelta(hours=1)))
DOC = Document(tuple(real_paragraphs(6)), date=DATED, url="https://example.org/lab-notes")


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> InboxSettings:
    return make_settings().inbox


def read(inbox: Path, name: str, data: bytes, settings: InboxSettings) -> Capture:
    path = inbox / name
    path.write_bytes(data)
    return read_capture(path, settings)


def refused(inbox: Path, name: str, data: bytes, settings: InboxSettings) -> Rejection:
    path = inbox / name
    path.write_bytes(data)
    with pytest.raises(Rejection) as info:
        read_capture(path, settings)
    assert info.value.hint, "every refusal carries a hint a person can act on"
    return info.value


def words(text: str) -> list[str]:
    return text.split()


# ---------------------------------------------------------------- PDF


def test_pdf_text_layer_and_information_are_read(inbox: Path, settings: InboxSettings) -> None:
    """A PDF's text is its text layer, one paragraph a paragraph; Title, Author and CreationDate become metadata."""
    capture = read(inbox, "notes.pdf", pdf_bytes(DOC), settings)
    assert capture.format == "pdf"
    assert words(capture.text) == words(DOC.text.encode("cp1252", "replace").decode("cp1252"))
    assert capture.text.count("\n\n") == len(DOC.paragraphs) - 1
    assert capture.metadata == {
        "title": DOC.title,
        "author": DOC.author,
        "date": "2024-03-05T09:30:00+01:00",
        "pages": 1,
    }
    assert capture.captured_at == "2024-03-05T09:30:00+01:00"


def test_pdf_columns_keep_their_order(inbox: Path, settings: InboxSettings) -> None:
    """Two columns written row by row are read column after column, not line by interleaved line."""
    capture = read(inbox, "columns.pdf", pdf_bytes(DOC, layout="columns"), settings)
    truth = " ".join(words(DOC.text.encode("cp1252", "replace").decode("cp1252")))
    assert " ".join(words(capture.text)) == truth


def test_pdf_words_spaced_by_gaps_keep_their_spaces(inbox: Path, settings: InboxSettings) -> None:
    """Words placed by displacement instead of space characters come out as separate words."""
    capture = read(inbox, "gaps.pdf", pdf_bytes(DOC, layout="gaps"), settings)
    assert words(capture.text) == words(DOC.text.encode("cp1252", "replace").decode("cp1252"))


def test_encrypted_pdf_is_refused(inbox: Path, settings: InboxSettings) -> None:
    """A PDF that needs a password says so."""
    error = refused(inbox, "locked.pdf", pdf_bytes(DOC, password="secret"), settings)
    assert error.code == "encrypted" and "password" in str(error)


def test_pdf_without_text_layer_needs_ocr(inbox: Path, settings: InboxSettings) -> None:
    """A scan (pages of images) is refused, saying it needs OCR."""
    error = refused(inbox, "scan.pdf", pdf_bytes(DOC, image_only=True), settings)
    assert error.code == "no_text_layer" and "OCR" in str(error) and "OCR" in error.hint


def test_truncated_pdf_is_refused(inbox: Path, settings: InboxSettings) -> None:
    """A PDF cut short (a download that stopped) is refused as truncated."""
    data = pdf_bytes(DOC)
    error = refused(inbox, "cut.pdf", data[: len(data) // 2], settings)
    assert error.code == "truncated" and "%%EOF" in str(error)


def test_corrupt_pdf_is_refused(inbox: Path, settings: InboxSettings) -> None:
    """Bytes that only look like a PDF at both ends are refused as not readable."""
    error = refused(inbox, "junk.pdf", b"%PDF-1.7\n" + os.urandom(3000) + b"\n%%EOF\n", settings)
    assert error.code in ("corrupt", "no_text_layer") and "PDF" in str(error)


def test_pdf_has_its_own_size_limit(inbox: Path, make_settings: Callable[..., Settings]) -> None:
    """A PDF over its format's limit is refused naming that key; a note's limit does not apply to it."""
    settings = make_settings(inbox={"max_bytes": 100, "format_max_bytes": {"pdf": 1000}}).inbox
    data = pdf_bytes(DOC)
    error = refused(inbox, "big.pdf", data, settings)
    assert error.code == "too_large" and "inbox.format_max_bytes.pdf" in str(error)
    small = make_settings(inbox={"max_bytes": 100, "format_max_bytes": {"pdf": len(data)}}).inbox
    assert read(inbox, "ok.pdf", data, small).text


def test_converted_text_has_a_cap(inbox: Path, make_settings: Callable[..., Settings]) -> None:
    """A document whose text is longer than inbox.max_text_chars is refused, naming the key."""
    settings = make_settings(inbox={"max_text_chars": 200}).inbox
    error = refused(inbox, "long.pdf", pdf_bytes(DOC), settings)
    assert error.code == "text_too_long" and "inbox.max_text_chars" in str(error)


# ---------------------------------------------------------------- web pages


def test_web_page_keeps_the_article_and_drops_the_rest(inbox: Path, settings: InboxSettings) -> None:
    """The article's text is kept; menu, cookie banner, teasers, comments, footer and script are not."""
    capture = read(inbox, "post.html", html_bytes(DOC), settings)
    assert capture.format == "html"
    for paragraph in DOC.paragraphs:
        assert " ".join(paragraph.split()[:8]) in " ".join(capture.text.split())
    for boilerplate in (
        "cookies",
        "Copyright 2026",
        "Why we moved to IPv6",
        "older firmware",
        "do not extract me",
        "Subscribe",
    ):
        assert boilerplate not in capture.text
    assert capture.metadata == {
        "title": DOC.title,
        "author": DOC.author,
        "date": "2024-03-05",
        "source": DOC.url,
        "site": "example.org",
    }
    assert capture.captured_at == "2024-03-05"


def test_htm_is_a_web_page_too(inbox: Path, settings: InboxSettings) -> None:
    """The .htm extension is read as a web page."""
    assert read(inbox, "post.htm", html_bytes(DOC), settings).format == "html"


def test_web_page_date_is_not_guessed_from_its_text(inbox: Path, settings: InboxSettings) -> None:
    """A page whose metadata states no date has none: "Copyright 2026" in its footer is not its date."""
    undated = Document(DOC.paragraphs)
    capture = read(inbox, "undated.html", html_bytes(undated), settings)
    assert "date" not in capture.metadata
    mtime = datetime.fromtimestamp(int((inbox / "undated.html").stat().st_mtime), UTC)
    assert capture.captured_at == mtime.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_page_without_text_is_refused(inbox: Path, settings: InboxSettings) -> None:
    """A page with no text (a saved redirect) is refused as empty."""
    page = (
        b'<html><head><meta http-equiv="refresh" content="0; url=https://example.org/"><title>Moved</title>'
        b"<script>location.href = '/';</script></head><body></body></html>"
    )
    assert refused(inbox, "menu.html", page, settings).code == "empty"


def test_binary_html_is_refused(inbox: Path, settings: InboxSettings) -> None:
    """A .html file holding binary data is refused as binary."""
    assert refused(inbox, "image.html", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), settings).code == "binary"


# ---------------------------------------------------------------- Word


def test_docx_paragraphs_and_tables_in_order(inbox: Path, settings: InboxSettings) -> None:
    """A Word file's headings, paragraphs and table rows are read in document order, with its core properties."""
    # python-docx writes the created time's wall clock as UTC, so the sample is dated in UTC.
    dated = Document(DOC.paragraphs, date=DATED.astimezone(UTC))
    data = docx_bytes(dated, table=[["Host", "Service"], ["nas", "Jellyfin"]])
    capture = read(inbox, "report.docx", data, settings)
    assert capture.format == "docx"
    assert capture.text.startswith(DOC.title + "\n\n" + DOC.paragraphs[0])
    assert capture.text.endswith("Host | Service\n\nnas | Jellyfin")
    assert capture.text.index(DOC.paragraphs[2]) < capture.text.index("Part 2") < capture.text.index(DOC.paragraphs[3])
    assert capture.metadata == {"title": DOC.title, "author": DOC.author, "date": "2024-03-05T08:30:00Z"}


def test_docx_zip_bomb_is_refused(inbox: Path, settings: InboxSettings) -> None:
    """A .docx whose members unpack past the limit is refused as a zip bomb, without unpacking it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        with archive.open("word/document.xml", "w", force_zip64=True) as member:
            block = b"\0" * (1 << 20)
            for _ in range(201):
                member.write(block)
    data = buffer.getvalue()
    assert len(data) < 1_000_000
    error = refused(inbox, "bomb.docx", data, settings)
    assert error.code == "zip_bomb" and "zip bomb" in str(error)


def test_truncated_docx_is_refused(inbox: Path, settings: InboxSettings) -> None:
    """A Word file cut short has no zip directory: refused as corrupt."""
    data = docx_bytes(DOC)
    error = refused(inbox, "cut.docx", data[: len(data) // 2], settings)
    assert error.code == "corrupt" and "cut short" in str(error)


def test_zip_that_is_not_a_word_file_is_refused(inbox: Path, settings: InboxSettings) -> None:
    """A zip without word/document.xml renamed to .docx is refused, saying what is missing."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    error = refused(inbox, "fake.docx", buffer.getvalue(), settings)
    assert error.code == "corrupt" and "word/document.xml" in str(error)


def test_docx_with_damaged_xml_is_refused(inbox: Path, settings: InboxSettings) -> None:
    """A Word file whose document part is not XML is refused as not readable."""
    source = zipfile.ZipFile(io.BytesIO(docx_bytes(DOC)))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for item in source.infolist():
            data = b"<w:document><w:body>" if item.filename == "word/document.xml" else source.read(item)
            archive.writestr(item, data)
    assert refused(inbox, "broken.docx", buffer.getvalue(), settings).code == "corrupt"


# ---------------------------------------------------------------- e-mail


def test_email_headers_body_and_attachments(inbox: Path, settings: InboxSettings) -> None:
    """An e-mail's Subject, From, To and Date head its text; a PDF attachment's text follows; all are listed."""
    report = Document(tuple(real_paragraphs(2, start=40)), title="Rack inventory")
    data = eml_bytes(
        DOC,
        attachments=[
            Attachment("inventory.pdf", pdf_bytes(report), "application/pdf"),
            Attachment("photo.jpg", b"\xff\xd8\xff" + bytes(500), "image/jpeg"),
        ],
    )
    capture = read(inbox, "mail.eml", data, settings)
    assert capture.format == "eml"
    assert capture.text.startswith(
        f"Subject: {DOC.title}\nFrom: Grete Lindqvist <grete@example.org>\nTo: Farid Haddad <farid@example.org>\nDate: "
    )
    assert words(DOC.paragraphs[0]) == words(capture.text.split("\n\n")[1])
    assert "Attachment: inventory.pdf" in capture.text and report.paragraphs[1].split()[0] in capture.text
    assert capture.metadata["title"] == DOC.title and capture.metadata["date"] == "2024-03-05T09:30:00+01:00"
    assert capture.metadata["attachments"] == [
        {"name": "inventory.pdf", "type": "application/pdf", "bytes": len(pdf_bytes(report)), "read": True},
        {
            "name": "photo.jpg",
            "type": "image/jpeg",
            "bytes": 503,
            "read": False,
            "reason": "not a format MemBrane reads",
        },
    ]
    assert capture.captured_at == "2024-03-05T09:30:00+01:00"


def test_email_with_huge_attachment_lists_it_unread(inbox: Path, make_settings: Callable[..., Settings]) -> None:
    """An attachment over its format's limit is listed with the reason; the e-mail itself is read."""
    settings = make_settings(inbox={"format_max_bytes": {"pdf": 1000, "eml": 30_000_000}}).inbox
    attached = pdf_bytes(Document(tuple(real_paragraphs(30))))
    capture = read(
        inbox, "big.eml", eml_bytes(DOC, attachments=[Attachment("big.pdf", attached, "application/pdf")]), settings
    )
    [listed] = capture.metadata["attachments"]
    assert listed["read"] is False and "too large" in listed["reason"] and "inbox.format_max_bytes" in listed["reason"]
    assert "Attachment:" not in capture.text


def test_email_over_its_limit_is_refused(inbox: Path, make_settings: Callable[..., Settings]) -> None:
    """An e-mail over the .eml limit (a huge attachment inside) is refused naming the key."""
    settings = make_settings(inbox={"format_max_bytes": {"eml": 20_000}}).inbox
    data = eml_bytes(DOC, attachments=[Attachment("disk.img", os.urandom(50_000))])
    error = refused(inbox, "huge.eml", data, settings)
    assert error.code == "too_large" and "inbox.format_max_bytes.eml" in str(error)


def test_encrypted_attachment_is_listed_with_its_reason(inbox: Path, settings: InboxSettings) -> None:
    """An attachment that cannot be read is listed with the converter's reason; the e-mail is still read."""
    data = eml_bytes(DOC, attachments=[Attachment("locked.pdf", pdf_bytes(DOC, password="x"), "application/pdf")])
    [listed] = read(inbox, "locked.eml", data, settings).metadata["attachments"]
    assert listed["read"] is False and "password" in listed["reason"]


def test_email_html_body_is_read_as_a_web_page(inbox: Path, settings: InboxSettings) -> None:
    """An e-mail with only an HTML body yields that body's text."""
    from email.message import EmailMessage

    message = EmailMessage()
    message["Subject"], message["From"], message["Date"] = (
        "Status",
        "ops@example.org",
        "Tue, 05 Mar 2024 09:30:00 +0000",
    )
    message.set_content("<html><body><p>" + DOC.paragraphs[0] + "</p></body></html>", subtype="html")
    capture = read(inbox, "html.eml", message.as_bytes(), settings)
    assert " ".join(DOC.paragraphs[0].split()[:6]) in " ".join(capture.text.split())
    assert "<p>" not in capture.text and capture.captured_at == "2024-03-05T09:30:00Z"


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'Content-Type: text/plain; charset="x-klingon"\n\nQapla\'\n', "charset 'x-klingon', which is unknown"),
        (b'Content-Type: text/plain; charset="utf-8"\n\ncaf\xe9 au lait\n', "not valid utf-8: byte 3 is 0xe9"),
        (b"Content-Type: text/plain\n\nna\xefve\n", "not valid utf-8"),
    ],
)
def test_email_with_broken_encoding_is_refused(inbox: Path, settings: InboxSettings, raw: bytes, fragment: str) -> None:
    """A body in an unknown charset, or with bytes invalid in its charset, is refused saying which."""
    data = b"From: a@example.org\nSubject: s\nMIME-Version: 1.0\n" + raw
    error = refused(inbox, "broken.eml", data, settings)
    assert error.code == "bad_encoding" and fragment in str(error)


def test_email_header_with_raw_bytes_is_refused(inbox: Path, settings: InboxSettings) -> None:
    """A header with 8-bit bytes outside any declared charset is refused as bad encoding."""
    error = refused(inbox, "header.eml", b"From: a@example.org\nSubject: caf\xe9\n\nbody\n", settings)
    assert error.code == "bad_encoding" and "Subject" in str(error)


def test_text_that_is_not_an_email_is_refused(inbox: Path, settings: InboxSettings) -> None:
    """A .eml with none of From, To, Subject, Date is not an e-mail."""
    error = refused(inbox, "plain.eml", b"Just some words.\nNo headers here.\n", settings)
    assert error.code == "corrupt" and "not an e-mail" in str(error)


def test_truncated_email_keeps_what_it_holds(inbox: Path, settings: InboxSettings) -> None:
    """An e-mail cut inside its attachment is read; the cut attachment is listed as not readable."""
    data = eml_bytes(DOC, attachments=[Attachment("r.pdf", pdf_bytes(DOC), "application/pdf")])
    capture = read(inbox, "cut.eml", data[: len(data) * 3 // 4], settings)
    [listed] = capture.metadata["attachments"]
    assert listed["read"] is False and listed["reason"]
    assert DOC.paragraphs[0].split()[0] in capture.text


# ---------------------------------------------------------------- the converter child


def test_conversion_past_its_time_is_refused(inbox: Path, make_settings: Callable[..., Settings]) -> None:
    """A conversion that runs past inbox.convert_timeout_s is stopped and refused naming the key."""
    settings = make_settings(inbox={"convert_timeout_s": 0.01}).inbox
    error = refused(inbox, "slow.pdf", pdf_bytes(DOC), settings)
    assert error.code == "conversion_timeout" and "inbox.convert_timeout_s" in str(error)


def test_missing_library_names_the_extra(tmp_path: Path) -> None:
    """Without a converter's library, a document is refused with a hint that names the formats extra."""
    shadow = tmp_path / "shadow"
    (shadow / "trafilatura").mkdir(parents=True)
    # A package that cannot be imported stands for one that is not installed (find_spec still sees it,
    # so the child's own import fails: the path a half-installed environment takes).
    (shadow / "trafilatura" / "__init__.py").write_text("raise ImportError('No module named trafilatura')\n")
    (tmp_path / "post.html").write_bytes(html_bytes(DOC))
    script = textwrap.dedent(f"""
        from pathlib import Path
        from membrane.capture import Rejection, read_capture
        from membrane.config import InboxSettings
        try:
            read_capture(Path({str(tmp_path / "post.html")!r}), InboxSettings(path=Path({str(tmp_path)!r})))
        except Rejection as exc:
            print(exc.code, "|", exc, "|", exc.hint)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    code, message, hint = (part.strip() for part in done.stdout.split("|"))
    assert code == "missing_extra" and "trafilatura" in message and "membrane[formats]" in hint


def test_conversion_past_its_memory_is_refused(inbox: Path, make_settings: Callable[..., Settings]) -> None:
    """A document that needs more memory than inbox.convert_memory_mb to read is refused naming the key."""
    source = zipfile.ZipFile(io.BytesIO(docx_bytes(DOC)))
    paragraph = b"<w:p><w:r><w:t>" + b"word " * 40 + b"</w:t></w:r></w:p>"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in source.infolist():
            if item.filename != "word/document.xml":
                archive.writestr(item, source.read(item))
                continue
            head, tail = source.read(item).split(b"<w:body>")
            with archive.open("word/document.xml", "w", force_zip64=True) as member:
                member.write(head + b"<w:body>")
                for _ in range(150_000_000 // len(paragraph)):  # 150 MB of XML: under the zip-bomb limit
                    member.write(paragraph)
                member.write(tail)
    settings = make_settings(inbox={"convert_memory_mb": 256, "max_text_chars": 10**9}).inbox
    error = refused(inbox, "huge.docx", buffer.getvalue(), settings)
    assert (
        error.code == "conversion_failed" and "out of memory" in str(error) and "inbox.convert_memory_mb" in str(error)
    )


def test_a_long_document_is_extracted_in_chunks(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    """A long PDF's text goes through extraction.chunk_chars like any long capture: every chunk is extracted."""
    from membrane.daemon import ingest
    from membrane.extract import split_text
    from membrane.journal import Journal
    from tests.support.pipeline import settings_sections, write_replay

    long = Document(tuple(real_paragraphs(30)))
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "long.pdf").write_bytes(pdf_bytes(long))
    text = read_capture(inbox / "long.pdf", InboxSettings(path=inbox)).text
    chunks = split_text(text, 1500)
    names = [chunk.text.split()[0].strip(".,:;()") for chunk in chunks]
    answers = [json.dumps({"entities": [{"name": name, "role": "subject"}], "relationships": []}) for name in names]
    replay = write_replay(tmp_path / "replay.jsonl", [(c.text, a) for c, a in zip(chunks, answers, strict=True)])
    settings = make_settings(**settings_sections(tmp_path, replay, extraction={"chunk_chars": 1500}))
    assert ingest(settings, [inbox]).ok
    with Journal(settings.journal.path) as journal:
        [(record, stored)] = list(journal.extractions.facts())
    assert len(chunks) > 5 and len(stored.result.chunks) == len(chunks)
    assert {e.name for e in stored.result.extraction.entities} == set(names)


def test_bad_documents_reach_failed_with_their_reasons(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    """Through `membrane ingest`'s pipeline, each bad document lands in failed/ with a sidecar saying why
    and what to do, and a good one beside them is processed."""
    from membrane.daemon import ingest
    from tests.support.pipeline import settings_sections, write_replay

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = Document(("Alice deployed Nextcloud on the Raspberry Pi.",))
    bad = {
        "locked.pdf": pdf_bytes(DOC, password="secret"),
        "scan.pdf": pdf_bytes(DOC, image_only=True),
        "cut.docx": docx_bytes(DOC)[:5000],
        "latin1.eml": b"From: a@example.org\nSubject: s\nContent-Type: text/plain; charset=utf-8\n\ncaf\xe9\n",
    }
    for name, data in {**bad, "good.pdf": pdf_bytes(good)}.items():
        (inbox / name).write_bytes(data)
    answer = json.dumps({"entities": [{"name": "Alice", "role": "subject"}], "relationships": []})
    replay = write_replay(tmp_path / "replay.jsonl", [(good.paragraphs[0], answer)])
    settings = make_settings(**settings_sections(tmp_path, replay))
    report = ingest(settings, [inbox])
    assert not report.ok
    assert sorted(p.name for p in settings.inbox.processed.iterdir()) == ["good.pdf"]
    codes = {}
    for name in bad:
        sidecar = json.loads((settings.inbox.failed / f"{name}.error.json").read_text(encoding="utf-8"))
        assert sidecar["stage"] == "read" and sidecar["hint"]
        codes[name] = sidecar["reason"]
    assert "password" in codes["locked.pdf"] and "OCR" in codes["scan.pdf"]
    assert "cut short" in codes["cut.docx"] and "not valid utf-8" in codes["latin1.eml"]
