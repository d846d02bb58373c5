"""Crash safety: the daemon as a subprocess, SIGKILLed at random moments
during a stream of captures and restarted. Every capture must end done once,
its file in processed/ once, and the graph equal to a clean run's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from membrane.config import Settings
from membrane.daemon import ingest
from tests.support.pipeline import crash_trial, graph_snapshot, note, replay_for, settings_sections

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]

CAPTURES = 12
TRIALS = 20


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory, neo4j_driver: Any, neo4j_server: Any) -> dict[str, Any]:
    """The graph of an uninterrupted run over the same captures (the reference)."""
    from tests.support.pipeline import wipe

    root = tmp_path_factory.mktemp("clean")
    replay = replay_for(CAPTURES, root / "replay.jsonl")
    neo4j = {"uri": neo4j_server.uri, "user": neo4j_server.user, "password": neo4j_server.password}
    settings = Settings.model_validate(settings_sections(root, replay, neo4j=neo4j))
    settings.inbox.path.mkdir(parents=True)
    for i in range(CAPTURES):
        (settings.inbox.path / note(i)[0]).write_text(note(i)[1], encoding="utf-8")
    wipe(neo4j_driver)
    assert ingest(settings, [settings.inbox.path]).ok
    return {"snapshot": graph_snapshot(neo4j_driver), "replay": replay, "neo4j": neo4j}


@pytest.mark.parametrize("seed", range(TRIALS))
def test_sigkill_at_a_random_moment_loses_and_duplicates_nothing(
    seed: int, clean_run: dict[str, Any], tmp_path: Path, neo4j_driver: Any
) -> None:
    """After a SIGKILL and a restart every capture is done once and the graph equals the clean run's."""
    result = crash_trial(
        tmp_path / "trial",
        clean_run["replay"],
        clean_run["neo4j"],
        neo4j_driver,
        seed=seed,
        captures=CAPTURES,
        expected=clean_run["snapshot"],
    )
    assert result["counts"]["done"] == CAPTURES
