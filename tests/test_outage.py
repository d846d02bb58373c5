"""Neo4j outage: the server is stopped mid-stream and started again. Extraction
goes on, facts wait in the journal, and every capture is projected once it is back.

The test stops and starts the rig's server with scripts/neo4j-local, so it runs
only against a server that script controls (the one MEMBRANE_TEST_NEO4J_URI
names, in $NEO4J_RIG_DIR); against any other server it is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from membrane.config import Settings
from membrane.daemon import Daemon, Notifier
from membrane.journal import Journal
from tests.support.pipeline import ROOT, graph_snapshot, note, replay_for, settings_sections, wait_for

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]

SCRIPT = ROOT / "scripts" / "neo4j-local"


def _rig(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), command], capture_output=True, text=True, timeout=240, env=os.environ.copy())


@pytest.fixture
def controllable_rig(neo4j_server: Any) -> Iterator[None]:
    """The test server is this checkout's scripts/neo4j-local rig; it is running again afterwards."""
    port = str(urlparse(neo4j_server.uri).port)
    status = _rig("status")
    if status.returncode != 0 or f":{port}," not in status.stdout:
        pytest.skip(f"the test Neo4j ({neo4j_server.uri}) is not this rig's server; cannot stop and start it")
    yield
    if _rig("status").returncode != 0:
        _rig("start")


def _counts(settings: Settings) -> dict[str, int]:
    with Journal(settings.journal.path) as journal:
        return journal.status.counts()


def test_neo4j_outage_mid_stream_loses_nothing(
    controllable_rig: None,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    neo4j_driver: Any,
    neo4j_settings: dict[str, Any],
) -> None:
    """With Neo4j stopped, captures are extracted and wait in the journal; after the restart all are projected once."""
    neo4j_driver.execute_query("MATCH (n) WHERE NOT n:MembraneMigration DETACH DELETE n")
    before, during = 4, 8
    settings = make_settings(
        **settings_sections(tmp_path, replay_for(before + during, tmp_path / "r.jsonl"), neo4j=neo4j_settings)
    )
    inbox = settings.inbox.path
    inbox.mkdir(parents=True)
    daemon = Daemon(settings, notifier=Notifier(""), install_signals=False)
    daemon.start()
    try:
        for i in range(before):
            (inbox / note(i)[0]).write_text(note(i)[1], encoding="utf-8")
        wait_for(lambda: _counts(settings)["done"] == before, 30, "captures before the outage")
        assert _rig("stop").returncode == 0
        for i in range(before, before + during):
            (inbox / note(i)[0]).write_text(note(i)[1], encoding="utf-8")
        wait_for(lambda: _counts(settings)["extracted"] == during, 60, "extraction during the outage")
        # The facts are in the journal, so the files leave the inbox after a failed projection try.
        wait_for(lambda: not list(inbox.glob("note-*.txt")), 60, "files moved out during the outage")
        with Journal(settings.journal.path) as journal:
            lag = journal.status.projection_lag()
        assert lag.count == during and _counts(settings)["done"] == before
        assert daemon.healthy()
        assert _rig("start").returncode == 0
        wait_for(lambda: _counts(settings)["done"] == before + during, 120, "projection after the outage")
    finally:
        daemon.shutdown()
    snapshot = graph_snapshot(neo4j_driver)
    assert len(snapshot["captures"]) == before + during
    assert len(snapshot["facts"]) == before + during
