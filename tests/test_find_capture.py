"""explore.find_capture: the capture a person names to `membrane facts` or `membrane forget`, journal only."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from membrane.config import Settings
from membrane.explore import find_capture
from membrane.journal import Journal
from tests.support.extraction import make_result


def _capture(journal: Journal, text: str, path: str, *, extracted: bool) -> str:
    digest = hashlib.sha256(text.encode()).hexdigest()
    journal.captures.enqueue(digest, path, text)
    if extracted:
        claimed = journal.claims.claim("t")
        assert claimed is not None and claimed.sha256 == digest
        journal.extractions.record(digest, make_result())
    return digest


def test_a_capture_is_found_by_sha256_prefix_or_either_path(make_settings: Callable[..., Settings]) -> None:
    """A full sha256 (any case), a unique prefix where asked for, the inbox path and the processed/ path name
    the capture with facts; a capture without facts is not found."""
    settings = make_settings()
    inbox = settings.inbox
    with Journal(settings.journal.path) as journal:
        digest = _capture(journal, "Ada uses Vim.", "notes/a.txt", extracted=True)
        waiting = _capture(journal, "Bob uses Emacs.", "notes/b.txt", extracted=False)

        def found(target: str, *, prefix: bool = False) -> str | None:
            record = find_capture(journal, inbox, target, prefix=prefix)
            return record.sha256 if record else None

        assert found(digest) == found(digest.upper()) == digest
        assert found(digest[:12], prefix=True) == digest and found(digest[:12]) is None
        assert found(digest[:7], prefix=True) is None  # shorter than `show` would ever print
        assert found(str(inbox.path / "notes" / "a.txt")) == digest
        assert found(str(inbox.processed / "notes" / "a.txt")) == digest
        assert found(str(Path("elsewhere") / "a.txt")) is None
        assert found(waiting) is None and found(str(inbox.path / "notes" / "b.txt")) is None
