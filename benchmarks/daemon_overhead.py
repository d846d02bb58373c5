"""Daemon overhead: captures per second and per-capture cost excluding model time.

1,000 captures go through the whole pipeline (`membrane ingest`'s code path:
read + sha256 + journal enqueue, claim, extract, store the extraction,
resolve, project, move to processed/, mark done) with the replay backend
answering from recorded outputs, so the model costs ~nothing and what is left
is MemBrane's own work. Model time (the extraction's recorded seconds) is
subtracted all the same. Journal-only, and with Neo4j when --neo4j is given
(the server from MEMBRANE_TEST_NEO4J_URI / _USER / _PASSWORD[_FILE], as
`scripts/neo4j-local env` prints them; its data is wiped). Each mode first runs
an untimed warm-up pass (--warmup captures, imports and the server's plan
cache), then the timed run; a run is reported as failed, with the reason,
unless every capture is done and (with Neo4j) the graph holds one Capture node
and one fact per capture. The script exits 1 when a run failed.

    .venv/bin/python benchmarks/daemon_overhead.py [--captures 1000] [--neo4j] [--warmup 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from checks import count_problems, exit_code, mark  # noqa: E402

from membrane.config import Settings  # noqa: E402
from membrane.daemon import ingest  # noqa: E402
from membrane.journal import Journal  # noqa: E402
from membrane.logs import configure_logging  # noqa: E402
from tests.support.neo4j_env import neo4j_required  # noqa: E402
from tests.support.pipeline import note, replay_for, settings_sections  # noqa: E402


def _wipe(neo4j: dict[str, Any]) -> None:
    from neo4j import GraphDatabase

    with GraphDatabase.driver(neo4j["uri"], auth=(neo4j["user"], neo4j["password"])) as driver:
        driver.execute_query("MATCH (n) WHERE NOT n:MembraneMigration DETACH DELETE n")


def _graph_counts(neo4j: dict[str, Any]) -> dict[str, int]:
    """Capture nodes and entity-to-entity facts in the graph."""
    from neo4j import GraphDatabase

    with GraphDatabase.driver(neo4j["uri"], auth=(neo4j["user"], neo4j["password"])) as driver:
        row = driver.execute_query(
            "CALL () { MATCH (c:Capture) RETURN count(c) AS captures } "
            "CALL () { MATCH (:Entity)-[r]->(:Entity) RETURN count(r) AS facts } RETURN captures, facts"
        ).records[0]
    return {"captures": row["captures"], "facts": row["facts"]}


def run(captures: int, neo4j: dict[str, Any] | None, *, tmp_dir: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="membrane-overhead-", dir=tmp_dir) as tmp:
        root = Path(tmp)
        replay = replay_for(captures, root / "replay.jsonl")
        settings = Settings.model_validate(settings_sections(root, replay, neo4j=neo4j))
        settings.inbox.path.mkdir(parents=True)
        for i in range(captures):
            name, text, _ = note(i)
            (settings.inbox.path / name).write_text(text, encoding="utf-8")
        if neo4j:
            _wipe(neo4j)
        with Journal(settings.journal.path) as journal:
            started, cpu_started = time.perf_counter(), time.process_time()
            report = ingest(settings, [settings.inbox.path], journal=journal)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            model_s = sum(stored.result.seconds for _, stored in journal.extractions.facts())
            done = journal.status.counts()["done"]
    # Each note names its own person, so every capture adds one Capture node and one fact.
    problems = [] if report.ok else ["the ingest reported failures"]
    problems += count_problems({"done": captures}, {"done": done})
    if neo4j:
        problems += count_problems({"captures": captures, "facts": captures}, _graph_counts(neo4j))
    overhead_ms = (wall - model_s) / captures * 1000
    return mark(
        {
            "mode": "neo4j" if neo4j else "journal-only",
            "filesystem": tmp_dir or tempfile.gettempdir(),
            "captures": captures,
            "wall_s": round(wall, 2),
            "captures_per_s": round(captures / wall, 1),
            "model_s_total": round(model_s, 3),
            "overhead_ms_per_capture": round(overhead_ms, 2),
            # CPU of this process (all threads), model included; the rest of the wall time is
            # waiting: fsync of the journal and of moved files, Neo4j round trips.
            "cpu_ms_per_capture": round(cpu / captures * 1000, 2),
        },
        problems,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", type=int, default=1000)
    parser.add_argument("--neo4j", action="store_true", help="also measure with projection into Neo4j")
    parser.add_argument("--tmp-dir", help="where the inbox and journal live (e.g. /dev/shm: no disk flushes)")
    parser.add_argument("--warmup", type=int, default=100, help="captures of the untimed warm-up pass per mode")
    args = parser.parse_args()
    configure_logging("warning", "console")
    results = []
    for neo4j in [None, neo4j_required()] if args.neo4j else [None]:
        warmup = run(max(1, args.warmup), neo4j, tmp_dir=args.tmp_dir)  # untimed; its failure fails the run
        result = run(args.captures, neo4j, tmp_dir=args.tmp_dir)
        if warmup["status"] == "failed":
            mark(result, [f"warm-up: {warmup['reason']}"])
        results.append(result)
    for result in results:
        print(json.dumps(result))
    raise SystemExit(exit_code(results))


if __name__ == "__main__":
    main()
