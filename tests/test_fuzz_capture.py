"""Fuzzing capture reading: every file is parsed into a storable capture or rejected with a reason.

A deterministic slice (hypothesis derandomized, no example database); the
10,000-input run is benchmarks/fuzz_inputs.py. Known findings are pinned as
explicit examples so they stay fixed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings

from membrane.capture import read_capture
from membrane.config import InboxSettings
from tests.support.fuzz import (
    PER_INPUT_LIMIT_S,
    SUITE,
    capture_files,
    classify_capture,
    classify_document,
    document_files,
    file_names,
    front_matters,
    json_captures,
    write_capture,
)


def _inbox(folder: Path) -> InboxSettings:
    return InboxSettings(path=folder, max_bytes=1_000_000)


def _check(extension: str, content: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="membrane-fuzz-") as tmp:
        path = write_capture(Path(tmp), b"capture" + extension.encode(), content)
        result = classify_capture(path, _inbox(Path(tmp)))
    assert result.ok, f"{result.outcome} ({result.detail}) for {content[:120]!r}"
    assert result.seconds < PER_INPUT_LIMIT_S, f"{result.seconds:.1f} s for {content[:120]!r}"


@SUITE
@given(capture_files())
def test_any_capture_file_is_parsed_or_rejected(case: tuple[str, bytes]) -> None:
    """Random bytes, messy UTF-8, JSON and front matter under any extension never escape the contract."""
    _check(*case)


@SUITE
@given(front_matters())
@example(b"---\ndate: 2001-13-45\n---\nbody\n")  # an impossible date: ValueError from PyYAML
@example(b"---\nn: " + b"1" * 5000 + b"\n---\nbody\n")  # over Python's int-to-str limit
@example(b"---\na: &a [*a]\n---\nbody\n")  # a self-referencing alias: endless recursion
@example(b"---\n" + b"[" * 5000 + b"\n---\nbody\n")  # deeper than the recursion limit
@example(b'---\nk: "\\ud800"\n---\nbody\n')  # a lone surrogate cannot be stored
@example(b"---\nkey: !!timestamp x\n---\nbody\n")  # AttributeError from PyYAML (benchmarks/fuzz_inputs.py)
@example(b"---\nkey: 0x" + b"f" * 5000 + b"\n---\nbody\n")  # fine in hex, over the limit in decimal
@example(b"---\nkey: .nan\nother: -.inf\n---\nbody\n")  # not JSON
@example(b"---\n" + b"\n".join(b"k%d: v%d" % (i, i) for i in range(30_000)) + b"\n---\nbody\n")  # 9 s to load
def test_any_front_matter_is_parsed_or_rejected(content: bytes) -> None:
    """Markdown front matter that is broken, huge, deep or aliased is metadata or a reasoned rejection."""
    _check(".md", content)


@SUITE
@given(json_captures())
@example(b"[" * 100_000)  # json's recursion limit
@example(b'{"text": "x", "source": ' + b"1" * 5000 + b"}")  # over Python's int-to-str limit
@example(b'{"text": "\\ud800 lone surrogate"}')  # parses, but no UTF-8 store accepts it
@example(b'{"text": "x", "tags": ["\\udfff"]}')
def test_any_json_capture_is_parsed_or_rejected(content: bytes) -> None:
    """JSON captures that are random, near the schema, deep or hold odd numbers and escapes keep the contract."""
    _check(".json", content)


@SUITE
@given(file_names())
def test_any_file_name_is_read(name: bytes) -> None:
    """A capture's name (newlines, control characters, 255 bytes, non-NFC, invalid UTF-8) never breaks reading."""
    with tempfile.TemporaryDirectory(prefix="membrane-fuzz-") as tmp:
        path = write_capture(Path(tmp), name, b"Alice works at Acme.\n")
        result = classify_capture(path, _inbox(Path(tmp)))
    assert result.ok, f"{result.outcome} ({result.detail}) for {name!r}"


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deep_json_is_rejected_naming_the_depth(tmp_path: Path, depth: int) -> None:
    """JSON nested past the parser's depth is a bad_json rejection that says so, not a RecursionError."""
    path = tmp_path / "deep.json"
    path.write_bytes(b'{"text": ' + b"[" * depth + b"]" * depth + b"}")
    with pytest.raises(Exception) as info:
        read_capture(path, _inbox(tmp_path))
    assert getattr(info.value, "code", None) == "bad_json" and "deep" in str(info.value)


def test_deeply_nested_front_matter_is_rejected_at_once(tmp_path: Path) -> None:
    """64 KiB of "[" in a front matter is rejected in under a second (the pure-Python YAML scanner took 2.5 s)."""
    import time

    path = tmp_path / "deep.md"
    path.write_bytes(b"---\n" + b"[" * 65_536 + b"\n---\nbody\n")
    started = time.perf_counter()
    with pytest.raises(Exception) as info:
        read_capture(path, _inbox(tmp_path))
    assert getattr(info.value, "code", None) == "bad_front_matter"
    assert time.perf_counter() - started < 1.0


@SUITE
@given(document_files())
def test_any_document_is_converted_or_refused(case: tuple[str, bytes]) -> None:
    """PDF, web page, Word and e-mail files cut, flipped, spliced or built as bombs are text or a reasoned refusal."""
    result = classify_document(*case)
    assert result.ok, f"{result.outcome} ({result.detail}) for {case[0]} {case[1][:120]!r}"
    assert result.seconds < PER_INPUT_LIMIT_S, f"{result.seconds:.1f} s for {case[0]} {case[1][:120]!r}"


@settings(SUITE, max_examples=8)
@given(document_files())
def test_any_document_file_is_read_or_refused_through_the_child(case: tuple[str, bytes]) -> None:
    """The same documents as capture files, converted in the child process the daemon uses."""
    _check(*case)
