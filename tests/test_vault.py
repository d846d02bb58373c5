"""Vault mode (inbox.mode = "vault"): a notes folder indexed in place by the
daemon, with its real watcher, journal and Neo4j: nothing moved or written,
edits re-extracted, deletions retracted, renames re-keyed."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from membrane.config import Settings
from membrane.daemon import Daemon, Notifier
from membrane.journal import Journal
from tests.support.pipeline import graph_snapshot, note, replay_for, settings_sections, wait_for

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]


@pytest.fixture
def vault(
    make_settings: Callable[..., Settings], tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> Iterator[tuple[Settings, Path]]:
    """A vault of three notes (one in a sub-folder) plus what a vault also holds, and a running daemon."""
    settings = make_settings(
        **settings_sections(
            tmp_path,
            replay_for(8, tmp_path / "r.jsonl"),
            neo4j=neo4j_settings,
            inbox={"mode": "vault", "rescan_interval_s": 0.5},
        )
    )
    root = settings.inbox.path
    (root / "projects").mkdir(parents=True)
    (root / ".obsidian").mkdir()
    (root / ".trash").mkdir()
    write(root / "a.md", 0)
    write(root / "b.md", 1)
    write(root / "projects" / "c.md", 2)
    write(root / ".obsidian" / "workspace.md", 3)  # settings of the app: never read
    write(root / ".trash" / "old.md", 4)  # deleted in the app: never read
    (root / "diagram.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # another format: ignored, not refused
    daemon = Daemon(settings, notifier=Notifier(""), install_signals=False)
    daemon.start()
    try:
        wait_for(lambda: counts(settings)["done"] == 3, 30, "the vault's notes done")
        yield settings, root
    finally:
        daemon.shutdown()


def write(path: Path, i: int) -> None:
    path.write_text(note(i)[1], encoding="utf-8")


def counts(settings: Settings) -> dict[str, int]:
    with Journal(settings.journal.path) as journal:
        return journal.status.counts()


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def graph_paths(neo4j: Any) -> list[str]:
    return sorted(path for _, path, _ in graph_snapshot(neo4j)["captures"])


def test_a_vault_is_read_in_place_and_never_written(vault: tuple[Settings, Path], neo4j: Any) -> None:
    """Notes in every sub-folder reach the graph; .obsidian/, .trash/ and other formats are left alone;
    no file is moved, written or added, and a note that cannot be read stays put with its reason in the journal."""
    settings, root = vault
    before = files(root)
    (root / "broken.md").write_bytes(b"caf\xe9\n")
    wait_for(lambda: _rejections(settings) == 1, 30, "the broken note refused")
    time.sleep(1.5)  # three rescans: a refused note is not refused again while unchanged
    assert _rejections(settings) == 1
    assert graph_paths(neo4j) == ["a.md", "b.md", "projects/c.md"]
    assert files(root) == sorted([*before, "broken.md"])
    assert (root / "broken.md").read_bytes() == b"caf\xe9\n"


def _rejections(settings: Settings) -> int:
    db = sqlite3.connect(settings.journal.path)
    try:
        return int(db.execute("SELECT count(*) FROM rejections WHERE path = 'broken.md'").fetchone()[0])
    finally:
        db.close()


def test_unchanged_notes_are_not_read_again_by_the_rescan(vault: tuple[Settings, Path]) -> None:
    """The periodic rescan (every 0.5 s here) hands out no note that is done and unchanged."""
    settings, _ = vault
    seen = _seen_at(settings)
    time.sleep(2.0)
    assert _seen_at(settings) == seen


def _seen_at(settings: Settings) -> list[tuple[str, str]]:
    db = sqlite3.connect(settings.journal.path)
    try:
        return db.execute("SELECT path, seen_at FROM capture_paths ORDER BY path").fetchall()
    finally:
        db.close()


def test_an_edited_note_replaces_its_old_facts(vault: tuple[Settings, Path], neo4j: Any) -> None:
    """A note edited in place is extracted again and the facts only its old version held are retracted."""
    settings, root = vault
    old = graph_snapshot(neo4j)
    write(root / "a.md", 5)
    wait_for(lambda: counts(settings)["retracted"] == 1 and counts(settings)["done"] == 3, 30, "the edit")
    wait_for(lambda: graph_paths(neo4j) == ["a.md", "b.md", "projects/c.md"], 30, "the graph's captures")
    now = graph_snapshot(neo4j)
    assert now != old
    new_text = note(5)[1]
    with Journal(settings.journal.path) as journal:
        record = journal.captures.last_for_path("a.md")
        assert record is not None and record.text == new_text
    assert (root / "a.md").read_text(encoding="utf-8") == new_text


def test_a_deleted_note_is_retracted(vault: tuple[Settings, Path], neo4j: Any) -> None:
    """Deleting a note, or moving it into .trash/ as Obsidian does, retracts its facts."""
    settings, root = vault
    (root / "b.md").unlink()
    os.rename(root / "projects" / "c.md", root / ".trash" / "c.md")
    wait_for(lambda: counts(settings)["retracted"] == 2, 30, "both retracted")
    wait_for(lambda: graph_paths(neo4j) == ["a.md"], 30, "the graph retraction")


def test_a_renamed_note_is_rekeyed(vault: tuple[Settings, Path], neo4j: Any) -> None:
    """A note renamed, or moved with its folder, keeps its facts under the new path: nothing retracted."""
    settings, root = vault
    facts = graph_snapshot(neo4j)["facts"]
    os.rename(root / "a.md", root / "renamed.md")
    os.rename(root / "projects", root / "archive")
    wait_for(lambda: graph_paths(neo4j) == ["archive/c.md", "b.md", "renamed.md"], 30, "the new paths")
    assert graph_snapshot(neo4j)["facts"] == facts
    assert counts(settings)["retracted"] == 0 and counts(settings)["done"] == 3
    with Journal(settings.journal.path) as journal:
        assert sorted(r.path for r in journal.captures.in_states(["done"])) == ["archive/c.md", "b.md", "renamed.md"]
