"""Fuzzing file names through the pipeline: every file ends in processed/ or in failed/ with its reason.

Names with newlines, control characters, 255 bytes, non-NFC forms and
invalid UTF-8 go through `membrane ingest`'s code path (journal-only, the
replay model): nothing is lost, nothing is left in the inbox, every failure
has a sidecar, and the journal stores every name as text.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from membrane.config import Settings
from membrane.daemon import ingest
from membrane.inbox import SIDECAR_SUFFIX
from tests.support.fuzz import SUITE, file_names, write_capture
from tests.support.pipeline import note, replay_for, settings_sections

LONG = b"a" * 251 + b".txt"


def _files(folder: Path) -> dict[bytes, bytes]:
    """{content: name} of the capture files (not sidecars) under `folder`."""
    found: dict[bytes, bytes] = {}
    if folder.exists():
        for entry in os.scandir(os.fsencode(folder)):
            if entry.is_file() and not entry.name.endswith(SIDECAR_SUFFIX.encode()):
                found[Path(os.fsdecode(entry.path)).read_bytes()] = entry.name
    return found


def _ingest_named(names: list[bytes], valid: list[bool]) -> None:
    with tempfile.TemporaryDirectory(prefix="membrane-fuzz-names-") as tmp:
        root = Path(tmp)
        settings = Settings.model_validate(settings_sections(root, replay_for(len(names), root / "replay.jsonl")))
        inbox = settings.inbox.path
        inbox.mkdir()
        contents = []
        for i, (name, good) in enumerate(zip(names, valid, strict=True)):
            content = note(i)[1].encode() if good else b"\xff binary " + str(i).encode()
            write_capture(inbox, name, content)
            contents.append(content)
        report = ingest(settings, [inbox])
        processed, failed = _files(settings.inbox.processed), _files(settings.inbox.failed)
        left = [e.name for e in os.scandir(os.fsencode(inbox)) if e.is_file()]
        assert not left, f"left in the inbox: {left}"
        for content in contents:
            assert (content in processed) != (content in failed), f"{content!r}: in processed/ xor failed/"
            if content in failed:
                sidecar = os.path.join(os.fsencode(settings.inbox.failed), failed[content] + SIDECAR_SUFFIX.encode())
                with open(sidecar, encoding="utf-8") as handle:
                    assert json.load(handle)["reason"]
        assert len(report.outcomes) == len(names) and not report.unfinished


@SUITE
@given(st.lists(st.tuples(file_names(), st.booleans()), min_size=1, max_size=3, unique_by=lambda t: t[0]))
@example([(LONG, False)])  # the sidecar's name would pass NAME_MAX
@example([(b"x\xff.txt", True)])  # undecodable bytes: the journal stores text
def test_any_file_name_ends_in_processed_or_failed(cases: list[tuple[bytes, bool]]) -> None:
    """Files with any name end in processed/ or failed/ (with a sidecar), none left in the inbox."""
    _ingest_named([name for name, _ in cases], [good for _, good in cases])


def test_a_long_rejected_name_keeps_a_sidecar(tmp_path: Path) -> None:
    """A rejected file with a 255-byte name lands in failed/ under a shorter name, its sidecar beside it."""
    _ingest_named([b"b" * 250 + b".bin"], [False])


def test_a_long_name_taken_in_processed_is_numbered_within_name_max(tmp_path: Path) -> None:
    """A second file under a 255-byte name already in processed/ gets a "-1" name cut to fit, not ENAMETOOLONG."""
    settings = Settings.model_validate(settings_sections(tmp_path, replay_for(2, tmp_path / "replay.jsonl")))
    settings.inbox.path.mkdir()
    for i in range(2):
        write_capture(settings.inbox.path, LONG, note(i)[1].encode())
        assert ingest(settings, [settings.inbox.path]).ok
    names = sorted(os.listdir(os.fsencode(settings.inbox.processed)))
    assert len(names) == 2 and all(len(n) <= 255 for n in names) and names[0].endswith(b"-1.txt")
