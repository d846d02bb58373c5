"""`membrane doctor`: health checks that each end in one line and a concrete fix.

Checks are data (Check); cli.py prints them. Each check catches only
MembraneError subclasses (third-party errors are translated in graph/store.py and
the backends), so a failing check never hides a bug behind a broad except.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from membrane.config import Settings
from membrane.errors import GraphAuthFailed, MembraneError

__all__ = ["MIN_NEO4J", "Check", "run_checks"]

MIN_NEO4J = (5, 26)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not applicable (skipped)
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        # One line per check: driver and server messages often span several.
        object.__setattr__(self, "detail", " ".join(self.detail.split()))
        object.__setattr__(self, "fix", " ".join(self.fix.split()))

    @property
    def status(self) -> str:
        return {True: "ok", False: "FAIL", None: "skip"}[self.ok]


def _writable_dir(name: str, path: Path, fix: str) -> Check:
    if not path.exists():
        return Check(name, False, f"{path} does not exist", fix or f"mkdir -p {path}")
    if not path.is_dir():
        return Check(name, False, f"{path} is not a folder", f"point the setting at a folder, not {path}")
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".membrane-doctor-"):
            pass
    except OSError as exc:
        return Check(
            name,
            False,
            f"{path} is not writable ({exc.strerror})",
            f"chown the folder to the user running membrane ({os.getuid()})",
        )
    return Check(name, True, f"{path} exists and is writable")


def check_inbox(settings: Settings) -> Check:
    return _writable_dir("inbox", settings.inbox.path, f"mkdir -p {settings.inbox.path} (or set inbox.path)")


def check_journal(settings: Settings) -> Check:
    folder = settings.journal.path.parent
    check = _writable_dir("journal", folder, f"mkdir -p {folder} (or set journal.path)")
    if check.ok:
        return Check("journal", True, f"{settings.journal.path} can be written")
    return check


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_neo4j(settings: Settings) -> Check:
    if not settings.neo4j.enabled:
        return Check("neo4j", None, "no neo4j.uri set: journal-only mode (`membrane export`, `membrane sync`)")
    from membrane.graph.store import GraphStore

    uri = settings.neo4j.uri
    try:
        with GraphStore.connect(settings) as store:
            info = store.server_info()
    except GraphAuthFailed:
        return Check(
            "neo4j",
            False,
            f"{uri} refused user {settings.neo4j.user!r}: wrong user or password",
            "set the right password in neo4j.password_file (or the neo4j-password credential)",
        )
    except MembraneError as exc:
        return Check(
            "neo4j",
            False,
            f"cannot reach {uri}: {exc}",
            "start Neo4j (`systemctl start neo4j`, or scripts/neo4j-local start) or fix neo4j.uri",
        )
    version = str(info.get("version", "?"))
    if _version_tuple(version) < MIN_NEO4J:
        return Check("neo4j", False, f"{uri} runs Neo4j {version}", "upgrade to Neo4j 5.26 or later")
    return Check("neo4j", True, f"{uri} Neo4j {version} {info.get('edition', '')}, authenticated".rstrip())


def check_model(settings: Settings) -> Check:
    from membrane.backends import get_backend
    from membrane.champion import effective_champion
    from membrane.journal import Journal, read_recorded_outputs
    from membrane.schema import ModelRef

    ref = ModelRef(settings.model.backend, settings.model.name)
    if settings.journal.path.exists():  # doctor must not create a journal
        with Journal(settings.journal.path) as journal:
            ref = effective_champion(settings, journal)
    try:
        recorded = functools.partial(read_recorded_outputs, settings.journal.path)
        result = get_backend(ref.backend, settings, recorded=recorded).check(ref.name)
    except MembraneError as exc:
        return Check("model", False, f"{ref}: {exc}", exc.hint or "see `membrane models`")
    return Check("model", result.ok, f"{ref}: {result.detail}", result.fix)


def check_formats(settings: Settings) -> Check:
    """Whether the document formats the inbox accepts can be read (the formats extra);
    not a failure without it: notes are read, documents go to failed/ saying why."""
    from membrane.formats import DOCUMENT_FORMATS, missing_libraries

    accepted = sorted({DOCUMENT_FORMATS[e.lower()] for e in settings.inbox.extensions if e.lower() in DOCUMENT_FORMATS})
    missing = {fmt: dist for fmt, dist in missing_libraries().items() if fmt in accepted}
    if not accepted:
        return Check("formats", None, "inbox.extensions accepts no documents (.pdf, .html, .docx, .eml)")
    if missing:
        return Check(
            "formats",
            None,
            f"{', '.join('.' + f for f in missing)} go to failed/: "
            f"{', '.join(sorted(set(missing.values())))} not installed",
            "pip install 'membrane[formats]' (or drop those extensions from inbox.extensions)",
        )
    return Check("formats", True, f"documents readable: {', '.join('.' + f for f in accepted)}")


CHECKS: tuple[Callable[[Settings], Check], ...] = (check_inbox, check_journal, check_formats, check_neo4j, check_model)


def run_checks(settings: Settings) -> list[Check]:
    """Every check after the config (which loading `settings` already passed)."""
    return [check(settings) for check in CHECKS]
