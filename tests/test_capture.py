"""Capture files: formats, metadata, sha256 and every rejection reason."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from membrane.capture import Capture, CaptureVanished, Rejection, read_capture
from membrane.config import InboxSettings, Settings


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> InboxSettings:
    return make_settings(inbox={"max_bytes": 1000}).inbox


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def rejected(path: Path, settings: InboxSettings) -> Rejection:
    with pytest.raises(Rejection) as info:
        read_capture(path, settings)
    assert info.value.hint, "every rejection carries a hint a person can act on"
    return info.value


def test_text_capture_keeps_its_text_and_hashes_its_bytes(inbox: Path, settings: InboxSettings) -> None:
    """A .txt capture's text is the file and its sha256 is of the file's bytes."""
    content = "Ada Lovelace wrote the first program.\n"
    capture = read_capture(write(inbox, "note.txt", content), settings)
    assert capture.text == content and capture.format == "txt" and capture.metadata == {}
    assert capture.sha256 == hashlib.sha256(content.encode()).hexdigest()


def test_markdown_front_matter_becomes_metadata(inbox: Path, settings: InboxSettings) -> None:
    """YAML front matter is kept as metadata (dates as ISO strings) and left out of the text."""
    path = write(inbox, "note.md", "---\ntitle: Homelab\ndate: 2026-01-31\ntags: [k8s, nas]\n---\n# Notes\nBody.\n")
    capture = read_capture(path, settings)
    assert capture.metadata == {"title": "Homelab", "date": "2026-01-31", "tags": ["k8s", "nas"]}
    assert capture.text == "# Notes\nBody.\n"


def test_markdown_without_a_mapping_block_is_all_text(inbox: Path, settings: InboxSettings) -> None:
    """Two horizontal rules around a paragraph are not front matter: the whole file is text."""
    content = "---\nJust a paragraph between rules\n---\nMore text.\n"
    capture = read_capture(write(inbox, "rules.md", content), settings)
    assert capture.text == content and capture.metadata == {}


def test_bad_front_matter_is_rejected_with_its_line(inbox: Path, settings: InboxSettings) -> None:
    """Front matter that is not valid YAML is refused, naming the line."""
    path = write(inbox, "bad.md", "---\ntitle: ok\ntags: [unclosed\n---\nBody\n")
    error = rejected(path, settings)
    assert error.code == "bad_front_matter" and "line" in str(error)


def test_yaml_alias_bomb_is_refused(inbox: Path, settings: InboxSettings) -> None:
    """Front matter whose aliases expand past the metadata bound is refused, not expanded."""
    bomb = "---\na: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
    bomb += "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n---\nx\n"
    assert rejected(write(inbox, "bomb.md", bomb), settings).code == "bad_front_matter"


def test_json_capture_fields_become_metadata(inbox: Path, settings: InboxSettings) -> None:
    """A JSON capture's text is its "text"; source, captured_at and tags are metadata."""
    path = write(
        inbox,
        "c.json",
        '{"text": "Jellyfin runs on the NAS.", "source": "phone", "captured_at": "2026-01-31T09:30:00Z", '
        '"tags": ["media"]}',
    )
    capture = read_capture(path, settings)
    assert capture.text == "Jellyfin runs on the NAS."
    assert capture.metadata == {"source": "phone", "captured_at": "2026-01-31T09:30:00Z", "tags": ["media"]}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"text": "x", "author": "me"}', "unknown key 'author'"),
        ('{"source": "phone"}', "missing key 'text'"),
        ('{"text": 3}', "'text'"),
        ('{"text": "x", "captured_at": "yesterday"}', "ISO-8601"),
        ('{"text": "x", "tags": "one"}', "'tags'"),
        ('["text"]', "must be an object"),
        ('{"text": "x",', "not valid JSON"),
        ('{"text": "   "}', "only whitespace"),
    ],
)
def test_bad_json_capture_names_the_problem(inbox: Path, settings: InboxSettings, content: str, expected: str) -> None:
    """A JSON capture with an unknown key, a missing or mistyped field is refused naming it."""
    error = rejected(write(inbox, "c.json", content), settings)
    assert expected in str(error)


def test_unknown_extension_is_rejected(inbox: Path, settings: InboxSettings) -> None:
    """A .png in the inbox is refused with the accepted extensions in the reason."""
    error = rejected(write(inbox, "scan.png", b"\x89PNG\r\n"), settings)
    assert error.code == "unknown_extension" and ".txt" in str(error) and ".pdf" in str(error) and ".png" in str(error)


def test_invalid_utf8_names_the_byte(inbox: Path, settings: InboxSettings) -> None:
    """Invalid UTF-8 is refused, saying at which byte and line."""
    error = rejected(write(inbox, "latin1.txt", "line one\ncaf\xe9".encode("latin-1")), settings)
    assert error.code == "invalid_utf8" and "byte 12 (line 2)" in str(error)


def test_binary_file_is_rejected(inbox: Path, settings: InboxSettings) -> None:
    """A binary file named .txt is refused (invalid UTF-8 or NUL bytes)."""
    error = rejected(write(inbox, "blob.txt", b"ELF\x00\x01\x02text"), settings)
    assert error.code == "binary" and "NUL byte at byte 3" in str(error)
    png = rejected(write(inbox, "image.txt", b"\x89PNG\r\n\x1a\n\x00\x00"), settings)
    assert png.code == "invalid_utf8"


@pytest.mark.parametrize("content", [b"", b"  \n\t\n"])
def test_empty_or_blank_file_is_rejected(inbox: Path, settings: InboxSettings, content: bytes) -> None:
    """An empty or whitespace-only capture is refused as empty."""
    assert rejected(write(inbox, "empty.txt", content), settings).code == "empty"


def test_markdown_with_only_front_matter_is_empty(inbox: Path, settings: InboxSettings) -> None:
    """A .md file with front matter and no text after it is refused as empty."""
    error = rejected(write(inbox, "meta.md", "---\ntitle: x\n---\n\n"), settings)
    assert error.code == "empty" and "after the front matter" in str(error)


def test_oversized_file_is_rejected(inbox: Path, settings: InboxSettings) -> None:
    """A file over inbox.max_bytes is refused, naming the size and the key."""
    error = rejected(write(inbox, "big.txt", "x" * 1001), settings)
    assert error.code == "too_large" and "1001 bytes" in str(error) and "inbox.max_bytes" in str(error)


def test_symlink_leading_outside_the_inbox_is_refused(inbox: Path, settings: InboxSettings, tmp_path: Path) -> None:
    """A symlink to a file outside the inbox is refused without reading it."""
    secret = write(tmp_path, "secret.txt", "outside")
    link = inbox / "link.txt"
    link.symlink_to(secret)
    assert rejected(link, settings).code == "symlink_outside"


def test_symlink_inside_the_inbox_is_followed(inbox: Path, settings: InboxSettings) -> None:
    """A symlink to a capture inside the inbox reads the target's text."""
    target = write(inbox, "real.txt", "inside")
    link = inbox / "alias.txt"
    link.symlink_to(target)
    assert read_capture(link, settings).text == "inside"


def test_broken_symlink_is_rejected(inbox: Path, settings: InboxSettings) -> None:
    """A symlink to nothing is refused as broken."""
    link = inbox / "dangling.txt"
    link.symlink_to(inbox / "missing.txt")
    assert rejected(link, settings).code == "broken_symlink"


def test_fifo_is_refused_without_blocking(inbox: Path, settings: InboxSettings) -> None:
    """A FIFO named .txt is refused at once and never opened (opening it would block)."""
    fifo = inbox / "pipe.txt"
    os.mkfifo(fifo)
    result: list[BaseException] = []
    thread = threading.Thread(target=lambda: result.append(_catch(fifo, settings)), daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "reading a FIFO blocked"
    assert isinstance(result[0], Rejection) and result[0].code == "not_regular" and "FIFO" in str(result[0])


def _catch(path: Path, settings: InboxSettings) -> BaseException:
    try:
        read_capture(path, settings)
    except BaseException as exc:  # handed back to the test thread
        return exc
    raise AssertionError("no error")


def test_directory_is_not_a_capture(inbox: Path, settings: InboxSettings) -> None:
    """A directory named like a capture is refused as not a regular file."""
    (inbox / "folder.txt").mkdir()
    error = rejected(inbox / "folder.txt", settings)
    assert error.code == "not_regular" and "directory" in str(error)


def test_file_deleted_before_reading_vanishes(inbox: Path, settings: InboxSettings) -> None:
    """A file gone before it is read raises CaptureVanished, which is not a rejection."""
    path = write(inbox, "gone.txt", "soon gone")
    path.unlink()
    with pytest.raises(CaptureVanished):
        read_capture(path, settings)


@pytest.mark.parametrize("name", ["line\nbreak.txt", "заметка.md", "笔记 2026.txt", "ملاحظة.json"])
def test_unusual_names_are_read(inbox: Path, settings: InboxSettings, name: str) -> None:
    """Names with newlines and non-Latin scripts are read like any other."""
    content = '{"text": "Привет"}' if name.endswith(".json") else "Привет, 世界"
    capture: Capture = read_capture(write(inbox, name, content), settings)
    assert capture.path.name == name and "Привет" in capture.text


def test_byte_order_mark_is_dropped(inbox: Path, settings: InboxSettings) -> None:
    """A UTF-8 byte order mark is not part of the text."""
    capture = read_capture(write(inbox, "bom.txt", b"\xef\xbb\xbfhello"), settings)
    assert capture.text == "hello"


@pytest.mark.parametrize(
    ("name", "content", "date"),
    [
        ("a.json", '{"text": "x", "captured_at": "2026-01-31T09:30:00Z"}', "2026-01-31T09:30:00Z"),
        ("b.md", "---\ndate: 2024-03-05\n---\nx\n", "2024-03-05"),
        ("c.md", "---\ncreated: 2024-03-05 10:00:00\n---\nx\n", "2024-03-05T10:00:00"),
        ("d.md", "---\ncreated: 2020-01-01\ndate: 2024-03-05T10:00+02:00\n---\nx\n", "2024-03-05T10:00+02:00"),
        ("e.md", "---\ncaptured_at: 2023-07-01\ndate: 2024-03-05\n---\nx\n", "2023-07-01"),
        ("f.md", "---\ndate: last Tuesday\ncreated: 2022-02-02\n---\nx\n", "2022-02-02"),
    ],
)
def test_a_capture_is_dated_as_its_note_writes_it(
    inbox: Path, settings: InboxSettings, name: str, content: str, date: str
) -> None:
    """The date is the first of captured_at, date, created that reads as ISO-8601, kept as the note writes it."""
    assert read_capture(write(inbox, name, content), settings).captured_at == date


@pytest.mark.parametrize("front", ["", "---\ndate: someday\n---\n", "---\ndate: 0999-01-01\n---\n"])
def test_an_undated_capture_takes_its_files_mtime(inbox: Path, settings: InboxSettings, front: str) -> None:
    """A capture with no (readable, four-digit-year) date of its own is dated by its file's mtime, to the second
    in UTC."""
    path = write(inbox, "n.md", front + "Alice works at Acme.\n")
    os.utime(path, (1_700_000_000.75, 1_700_000_000.75))
    assert read_capture(path, settings).captured_at == "2023-11-14T22:13:20Z"
