"""Several daemons, one Neo4j: three `membrane run` processes, each with its own inbox
and journal, against one daemon with the same captures.

Each of the three daemons gets --per-daemon captures of its own plus --shared
captures it holds byte for byte with the next daemon; the notes' entities and
relationships recur across all of them (tests/support/daemons.py), so every
daemon extends and shrinks the same `sources` lists at once. All inboxes fill
at the same time; each daemon deletes --deleted of its own captures as soon as
they are processed, while the rest are still arriving. The replay backend
answers, so what is timed is the daemons and the graph writes. The same plan
then runs on one daemon alone, on a wiped graph.

Each row gives the wall time, captures lost (neither done nor retracted in
their journal), duplicate nodes and relationships, and the write transactions
the driver ran again after a transient error (a deadlock) or MemBrane retried
after a uniqueness race, counted from the daemons' logs; the three-daemon row
also gives its difference from the one daemon's graph (elements either lacks).
A row is failed, with the reason, unless every daemon exits 0 on SIGTERM, its
journal holds every capture done or retracted, and the graph holds no duplicate
node or relationship; the three-daemon row also fails unless its graph equals
the one daemon's (captures, entities, mentions, relationships with their
sources). The one-daemon run comes first: it is the warm-up for the JVM and the
plan cache too. Neo4j comes from MEMBRANE_TEST_NEO4J_URI / _USER /
_PASSWORD[_FILE], as `scripts/neo4j-local env` prints them; its data is wiped.

    .venv/bin/python benchmarks/several_daemons.py [--per-daemon 1000] [--shared 100] [--deleted 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from checks import count_problems, exit_code, mark  # noqa: E402

from tests.support.daemons import Plan, duplicate_facts, duplicate_nodes, run_fleet, shared_replay  # noqa: E402
from tests.support.neo4j_env import neo4j_required  # noqa: E402
from tests.support.pipeline import graph_snapshot, wipe  # noqa: E402


def run(
    label: str, plan: Plan, replay: Path, neo4j: dict[str, Any], driver: Any, work: Path, concurrency: int
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One fleet run on a wiped graph: its row and the graph it left (None when it did not finish)."""
    wipe(driver)
    captures = sum(len(group) for group in plan.notes)
    row: dict[str, Any] = {
        "run": label,
        "daemons": len(plan.notes),
        "captures": captures,
        "deleted": sum(len(group) for group in plan.deleted),
        "concurrency": concurrency,
    }
    try:
        result = run_fleet(
            work / label, plan, replay, neo4j, concurrency=concurrency, timeout_s=max(300.0, captures * 0.5)
        )
    except AssertionError as exc:
        return mark(row, [str(exc)]), None
    logs = "".join(Path(log).read_text(errors="replace") for log in result["logs"])
    accounted = sum(counts.get("done", 0) + counts.get("retracted", 0) for counts in result["counts"])
    facts, nodes = duplicate_facts(driver), duplicate_nodes(driver)
    row.update(
        seconds=round(result["seconds"], 1),
        captures_per_s=round(captures / result["seconds"], 1),
        lost=captures - accounted,
        duplicate_nodes=len(nodes),
        duplicate_relationships=len(facts),
        transactions_retried=logs.count('"graph_transaction_retried"'),
        write_races_retried=logs.count('"graph_write_race_retried"'),
    )
    problems = count_problems({"exit codes": 0}, {"exit codes": max(result["exit_codes"])})
    problems += [f"duplicate relationship {fact}" for fact in facts[:3]]
    problems += [f"duplicate node {node}" for node in nodes[:3]]
    return mark(row, problems), graph_snapshot(driver)


def difference(expected: dict[str, Any], graph: dict[str, Any]) -> int:
    """Captures, entities, mentions and relationships (with their sources) that one graph has and the other lacks."""
    return sum(len(set(expected[kind]) ^ set(graph[kind])) for kind in expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-daemon", type=int, default=1000, help="captures of each daemon's own")
    parser.add_argument("--shared", type=int, default=100, help="captures each daemon shares with the next")
    parser.add_argument("--deleted", type=int, default=100, help="captures each daemon deletes")
    parser.add_argument("--concurrency", type=int, default=2, help="daemon.concurrency of every daemon")
    parser.add_argument("--work-dir", type=Path, help="inboxes, journals and logs (default: a temp dir)")
    args = parser.parse_args()
    from neo4j import GraphDatabase

    neo4j = neo4j_required()
    plan = Plan.overlapping(daemons=3, per_daemon=args.per_daemon, shared=args.shared, deleted=args.deleted)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="membrane-several-"))
    work.mkdir(parents=True, exist_ok=True)
    replay = shared_replay(work / "replay.jsonl", plan.count)
    with GraphDatabase.driver(neo4j["uri"], auth=(neo4j["user"], neo4j["password"])) as driver:
        alone, expected = run("one daemon", plan.alone(), replay, neo4j, driver, work, args.concurrency)
        three, graph = run("three daemons", plan, replay, neo4j, driver, work, args.concurrency)
    if expected is not None and graph is not None:
        three["graph_difference"] = difference(expected, graph)
    if expected is None or graph is None or graph != expected:
        mark(three, ["the graph differs from the one daemon's" if expected and graph else "no graph to compare"])
    for row in (alone, three):
        print(json.dumps(row), flush=True)
    print(f"# work dir {work}", flush=True)
    raise SystemExit(exit_code([alone, three]))


if __name__ == "__main__":
    main()
