"""File rules every layer shares: a file's sha256, the atomic write, and JSONL
lines with their numbers.

Owned here, at the bottom, because the inbox, the bench, the score files,
training and the CLI all need them and none of them owns the others' files.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

__all__ = ["JsonlLineError", "atomic_write", "file_sha256", "fsync_dir", "read_jsonl"]


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; not every filesystem supports it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@overload
def atomic_write(path: Path, *, binary: Literal[False] = False) -> AbstractContextManager[TextIO]: ...
@overload
def atomic_write(path: Path, *, binary: Literal[True]) -> AbstractContextManager[BinaryIO]: ...
def atomic_write(path: Path, *, binary: bool = False) -> AbstractContextManager[IO[Any]]:
    """Write `path` whole or not at all: what is written to the handle goes to a
    temporary file beside it, fsynced, then renamed over `path`. A reader (or a
    crash) sees the old bytes or the new ones, never a torn file; on an error
    the temporary file is removed and `path` is left as it was. Text is UTF-8."""
    return _atomic_write(path, binary)


@contextmanager
def _atomic_write(path: Path, binary: bool) -> Iterator[IO[Any]]:
    # The temporary name starts with "." so that no inbox ever picks it up.
    # Not derived from the name: a long name plus a suffix would not fit NAME_MAX.
    temporary = path.with_name(f".membrane-{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(temporary, "wb") if binary else open(temporary, "w", encoding="utf-8") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class JsonlLineError(ValueError):
    """A line of a JSONL file that is not JSON; `number` counts from 1, `error` is json's own."""

    def __init__(self, number: int, error: json.JSONDecodeError) -> None:
        super().__init__(f"line {number}: {error}")
        self.number = number
        self.error = error


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Each non-blank line of a JSONL file, decoded, with its line number (from 1).

    The whole file is read first, so an OSError comes before any line; a line
    that is not JSON raises JsonlLineError naming it. What a record must hold
    is the caller's to check.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JsonlLineError(number, exc) from exc
        yield number, record
