"""Journaled retractions: the graph half of a retraction is a journal flag that
project_due and recover retry, so an outage or a restart only delays it.

An outage here is a real one: the [neo4j] URI names a local port nothing
listens on, so the driver fails to connect exactly as when the server is down.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from membrane.cli import main
from membrane.config import Settings
from membrane.daemon import ingest
from membrane.journal import Journal
from membrane.journal.migrations import MIGRATIONS
from membrane.pipeline import Pipeline
from tests.support.pipeline import graph_snapshot, note, replay_for, settings_sections, toml_text


def _dead_uri() -> str:
    """A bolt URI on a local port that was free a moment ago: connecting is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"bolt://127.0.0.1:{port}"


def _ingested(
    make_settings: Callable[..., Settings], tmp_path: Path, neo4j_settings: dict[str, Any], count: int = 2
) -> tuple[Settings, Settings]:
    """Settings for the live Neo4j and for a dead one, after `count` notes were ingested into the live one."""
    sections = settings_sections(tmp_path, replay_for(count, tmp_path / "r.jsonl"), neo4j=neo4j_settings)
    live = make_settings(**sections)
    dead = make_settings(**{**sections, "neo4j": {**sections["neo4j"], "uri": _dead_uri()}})
    live.inbox.path.mkdir(parents=True)
    for i in range(count):
        (live.inbox.path / note(i)[0]).write_text(note(i)[1], encoding="utf-8")
    assert ingest(live, [live.inbox.path]).ok
    return live, dead


def _graph_paths(driver: Any) -> list[str]:
    return [path for _, path, _ in graph_snapshot(driver)["captures"]]


def _retract_during_outage(dead: Settings, journal: Journal) -> str:
    """Retract note 0 while Neo4j is unreachable; returns its sha256."""
    record = journal.captures.last_for_path(note(0)[0])
    assert record is not None
    pipeline = Pipeline(dead, journal)
    try:
        assert pipeline.retract(record.sha256, reason="deleted")
    finally:
        pipeline.graph.close()
    return record.sha256


@pytest.mark.neo4j
def test_a_retraction_during_an_outage_is_retried_when_neo4j_returns(
    make_settings: Callable[..., Settings], tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """A retraction whose graph half fails in an outage stays pending, and project_due finishes it once Neo4j
    answers."""
    live, dead = _ingested(make_settings, tmp_path, neo4j_settings)
    with Journal(live.journal.path) as journal:
        sha = _retract_during_outage(dead, journal)
        assert [r.sha256 for r in journal.captures.retractions_due()] == [sha]
        assert len(_graph_paths(neo4j)) == 2  # the graph still holds it
        pipeline = Pipeline(live, journal)
        try:
            pipeline.project_due()
        finally:
            pipeline.graph.close()
        assert journal.captures.retractions_due() == []
        record = journal.captures.get(sha)
        assert record is not None and record.state == "retracted" and not record.graph_retraction_pending
    assert _graph_paths(neo4j) == [note(1)[0]]


@pytest.mark.neo4j
def test_a_pending_retraction_survives_a_restart(
    make_settings: Callable[..., Settings], tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """A retraction left pending by an outage is in the journal after a restart, and recover() carries it to the
    graph."""
    live, dead = _ingested(make_settings, tmp_path, neo4j_settings)
    with Journal(live.journal.path) as journal:
        sha = _retract_during_outage(dead, journal)
    with Journal(live.journal.path) as journal:  # a new process: nothing survives but the journal
        assert [r.sha256 for r in journal.captures.retractions_due()] == [sha]
        pipeline = Pipeline(live, journal)
        try:
            pipeline.recover()
        finally:
            pipeline.graph.close()
        assert journal.captures.retractions_due() == []
    assert _graph_paths(neo4j) == [note(1)[0]]


@pytest.mark.neo4j
def test_forget_during_an_outage_says_so_and_the_daemon_finishes_it(
    make_settings: Callable[..., Settings], tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """`forget` with Neo4j down retracts in the journal, exits 1 naming the outage, and the next pass removes
    the facts."""
    live, dead = _ingested(make_settings, tmp_path, neo4j_settings)
    config = tmp_path / "dead.toml"
    sections = settings_sections(tmp_path, tmp_path / "r.jsonl", neo4j={**neo4j_settings, "uri": dead.neo4j.uri})
    config.write_text(toml_text(sections), encoding="utf-8")
    result = CliRunner().invoke(
        main, ["--config", str(config), "forget", str(live.inbox.path / "processed" / note(0)[0])]
    )
    assert result.exit_code == 1 and "Neo4j is unavailable" in result.output
    assert len(_graph_paths(neo4j)) == 2
    with Journal(live.journal.path) as journal:
        pipeline = Pipeline(live, journal)
        try:
            pipeline.project_due()
        finally:
            pipeline.graph.close()
    assert _graph_paths(neo4j) == [note(1)[0]]


@pytest.mark.neo4j
def test_a_capture_back_before_its_graph_retraction_keeps_its_facts(
    make_settings: Callable[..., Settings], tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """The same bytes arriving again cancel a pending graph retraction: the facts are projected, never removed after."""
    live, dead = _ingested(make_settings, tmp_path, neo4j_settings)
    with Journal(live.journal.path) as journal:
        sha = _retract_during_outage(dead, journal)
        back = journal.captures.enqueue(sha, note(0)[0], note(0)[1])
        assert back.record.state == "extracted" and not back.record.graph_retraction_pending
        assert journal.captures.retractions_due() == []
        pipeline = Pipeline(live, journal)
        try:
            pipeline.project_due()
        finally:
            pipeline.graph.close()
        assert journal.captures.get(sha).state == "done"  # type: ignore[union-attr]
    assert sorted(_graph_paths(neo4j)) == sorted([note(0)[0], note(1)[0]])


def test_an_old_journal_opens_with_its_retractions_pending(tmp_path: Path) -> None:
    """A journal written before migration m005 opens, and its retracted captures become pending graph retractions."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    for migration in MIGRATIONS[:4]:
        migration(db)
        db.execute("INSERT INTO _migrations VALUES (?, 'then')", (migration.__name__.lstrip("_"),))
    for sha, state in (("a" * 64, "retracted"), ("b" * 64, "done")):
        db.execute(
            "INSERT INTO captures (sha256, path, text, state, ingested_at, updated_at) "
            "VALUES (?, ?, 'x', ?, 'then', 'then')",
            (sha, f"{state}.txt", state),
        )
    db.commit()
    db.close()
    with Journal(path) as journal:
        assert journal.migrations_applied == ["m005_graph_retractions", "m006_search", "m007_captured_at"]
        assert [r.sha256 for r in journal.captures.retractions_due()] == ["a" * 64]


def test_journal_only_retractions_are_never_pending(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Without Neo4j a retraction is complete in the journal: nothing waits for a graph."""
    settings = make_settings(**settings_sections(tmp_path, replay_for(1, tmp_path / "r.jsonl")))
    settings.inbox.path.mkdir(parents=True)
    (settings.inbox.path / note(0)[0]).write_text(note(0)[1], encoding="utf-8")
    assert ingest(settings, [settings.inbox.path]).ok
    with Journal(settings.journal.path) as journal:
        record = journal.captures.last_for_path(note(0)[0])
        assert record is not None
        assert Pipeline(settings, journal).retract(record.sha256, reason="deleted")
        assert journal.captures.get(record.sha256).state == "retracted"  # type: ignore[union-attr]
        assert journal.captures.retractions_due() == []
