"""Several daemons, one Neo4j: three `membrane run` processes, each with its own inbox and journal, ingest
notes whose entities and relationships overlap (and some notes byte for byte) into one graph at the same time,
then delete some of their notes while the rest are still being ingested; the graph must be the one a single
daemon makes from the same notes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from membrane.config import Settings
from membrane.daemon import ingest
from membrane.journal import Journal
from membrane.pipeline import sync
from tests.support.daemons import (
    Plan,
    duplicate_facts,
    duplicate_nodes,
    notes_of,
    run_fleet,
    shared_note,
    shared_replay,
)
from tests.support.pipeline import ROOT, graph_snapshot, settings_sections, wipe

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]


def sha256_of(i: int) -> str:
    return hashlib.sha256(shared_note(i)[1].encode("utf-8")).hexdigest()


def test_three_daemons_make_the_graph_one_daemon_makes(
    tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """Same captures, entities, mentions and relationships with the same `sources`, no duplicate node or
    relationship, no capture lost, each deleted capture gone: three daemons at once equal one daemon alone."""
    plan = Plan.overlapping(daemons=3, per_daemon=16, shared=4, deleted=5)
    replay = shared_replay(tmp_path / "replay.jsonl", plan.count)
    kept = notes_of(plan)

    alone = run_fleet(tmp_path / "one", plan.alone(), replay, neo4j_settings)
    assert alone["exit_codes"] == [0], alone["logs"]
    expected = graph_snapshot(neo4j)
    in_graph = {sha for sha, _, _ in expected["captures"]}
    assert in_graph == {sha256_of(i) for i in kept}, (
        f"notes missing from the graph: {sorted(i for i in kept if sha256_of(i) not in in_graph)}; "
        f"logs: {alone['logs']}"
    )
    # Each note states two facts: every kept note is in exactly two `sources` lists, and facts are shared.
    sources = [sha for *_, shas in expected["facts"] for sha in shas]
    assert sorted(sources) == sorted(sha256_of(i) for i in kept for _ in range(2))
    assert max(len(shas) for *_, shas in expected["facts"]) >= 5
    assert not duplicate_facts(neo4j) and not duplicate_nodes(neo4j)

    wipe(neo4j)
    three = run_fleet(tmp_path / "three", plan, replay, neo4j_settings)
    assert three["exit_codes"] == [0, 0, 0], three["logs"]
    assert duplicate_facts(neo4j) == [] and duplicate_nodes(neo4j) == []
    assert graph_snapshot(neo4j) == expected, three["logs"]


def test_sync_on_a_shared_graph_leaves_the_other_daemons_captures(
    tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """With graph.shared, `sync` on one daemon keeps another daemon's captures; without it, one journal is
    taken for the whole graph and they are retracted, until the other daemon's own `sync` puts them back."""
    replay = shared_replay(tmp_path / "replay.jsonl", 6)
    daemons = []
    for name, notes in (("a", range(3)), ("b", range(3, 6))):
        settings = Settings.model_validate(
            settings_sections(tmp_path / name, replay, neo4j=neo4j_settings, graph={"shared": True})
        )
        settings.inbox.path.mkdir(parents=True)
        for i in notes:
            (settings.inbox.path / shared_note(i)[0]).write_text(shared_note(i)[1], encoding="utf-8")
        assert ingest(settings, [settings.inbox.path]).ok
        daemons.append(settings)
    both = graph_snapshot(neo4j)
    assert len(both["captures"]) == 6
    with Journal(daemons[0].journal.path) as journal:
        assert sync(daemons[0], journal).retracted == 0
        assert graph_snapshot(neo4j) == both
        alone = daemons[0].model_copy(update={"graph": daemons[0].graph.model_copy(update={"shared": False})})
        assert sync(alone, journal).retracted == 3
    with Journal(daemons[1].journal.path) as journal:
        assert sync(daemons[1], journal).projected == 3
    assert graph_snapshot(neo4j) == both


def test_the_benchmark_runs_at_a_tiny_scale(tmp_path: Path, neo4j: Any, neo4j_server: Any) -> None:
    """benchmarks/several_daemons.py with 3 x 6 captures: both rows ok, nothing lost or duplicated, the graphs
    equal, the retries counted; exit 0."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MEMBRANE_TEST_NEO4J_URI": neo4j_server.uri,
        "MEMBRANE_TEST_NEO4J_USER": neo4j_server.user,
        "MEMBRANE_TEST_NEO4J_PASSWORD": neo4j_server.password,
        "MEMBRANE_TEST_NEO4J_PASSWORD_FILE": "",
    }
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "several_daemons.py"),
            "--per-daemon",
            "6",
            "--shared",
            "2",
            "--deleted",
            "2",
            "--work-dir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [(row["run"], row["status"]) for row in rows] == [("one daemon", "ok"), ("three daemons", "ok")]
    assert [(row["lost"], row["duplicate_nodes"], row["duplicate_relationships"]) for row in rows] == [(0, 0, 0)] * 2
    assert rows[1]["graph_difference"] == 0
    assert all(isinstance(row[key], int) for row in rows for key in ("transactions_retried", "write_races_retried"))


def test_an_upsert_waiting_on_an_entity_that_a_retraction_deletes_keeps_its_facts(
    tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """A capture's upsert that found an entity and waits for its lock while another transaction deletes it (a
    retraction dropping an orphan) still writes its mentions and facts: the entity is created again."""
    replay = shared_replay(tmp_path / "replay.jsonl", 10)
    settings = Settings.model_validate(settings_sections(tmp_path, replay, neo4j=neo4j_settings))
    settings.inbox.path.mkdir(parents=True)
    first, second = shared_note(0), shared_note(5)  # both about Alice
    (settings.inbox.path / first[0]).write_text(first[1], encoding="utf-8")
    assert ingest(settings, [settings.inbox.path]).ok
    deleting = neo4j.session()
    retraction = deleting.begin_transaction()  # holds the entity's lock, as a retraction's orphan deletion does
    retraction.run("MATCH (e:Entity {key: 'alice'}) DETACH DELETE e").consume()
    (settings.inbox.path / second[0]).write_text(second[1], encoding="utf-8")
    reports: list[Any] = []
    upsert = threading.Thread(target=lambda: reports.append(ingest(settings, [settings.inbox.path / second[0]])))
    upsert.start()
    time.sleep(2.0)  # the upsert has matched Alice and waits for her lock
    retraction.commit()
    deleting.close()
    upsert.join(timeout=120)
    assert reports and reports[0].ok
    sha = hashlib.sha256(second[1].encode("utf-8")).hexdigest()
    mentioned = neo4j.execute_query(
        "MATCH (:Capture {sha256: $sha})-[:MENTIONS]->(e:Entity) RETURN e.key AS key", sha=sha
    ).records
    assert sorted(r["key"] for r in mentioned) == ["alice", "garage nas", "jellyfin"]
    facts = neo4j.execute_query(
        "MATCH (:Entity {key: 'alice'})-[r]->(o:Entity) WHERE $sha IN r.sources RETURN o.key AS key", sha=sha
    ).records
    assert [r["key"] for r in facts] == ["jellyfin"]
