"""membrane/files.py: a file's sha256, the atomic write, JSONL lines with their numbers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from membrane.files import JsonlLineError, atomic_write, file_sha256, read_jsonl


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    """The digest of a file larger than one read block equals hashlib's over all its bytes."""
    data = bytes(range(256)) * 5000
    (tmp_path / "blob").write_bytes(data)
    assert file_sha256(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    """Text and bytes land under the target name; nothing else is left in the folder."""
    target = tmp_path / "out.json"
    target.write_text("old", encoding="utf-8")
    with atomic_write(target) as handle:
        handle.write("new é\n")
    assert target.read_bytes() == "new é\n".encode()
    with atomic_write(tmp_path / "out.bin", binary=True) as raw:
        raw.write(b"\x00\x01")
    assert (tmp_path / "out.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "out.json"]


def test_atomic_write_keeps_the_old_file_on_an_error(tmp_path: Path) -> None:
    """An error while writing leaves the old bytes and removes the temporary file."""
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_write(target) as handle:
        handle.write("half")
        raise RuntimeError("disk full")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_read_jsonl_numbers_lines_and_names_the_bad_one(tmp_path: Path) -> None:
    """Blank lines are skipped but counted; a line that is not JSON raises with its number."""
    path = tmp_path / "cases.jsonl"
    path.write_text('{"id": 1}\n\n  \n[2]\n', encoding="utf-8")
    assert list(read_jsonl(path)) == [(1, {"id": 1}), (4, [2])]
    path.write_text('{"id": 1}\n{oops\n', encoding="utf-8")
    with pytest.raises(JsonlLineError) as caught:
        list(read_jsonl(path))
    assert caught.value.number == 2 and caught.value.error.msg.startswith("Expecting property name")
