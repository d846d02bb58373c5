"""Graph-write benchmark: the same N synthetic extractions written into the
same Neo4j by (a) MemBrane's GraphStore, (b) neo4j-graphrag's Neo4jWriter,
(c) LangChain's Neo4jGraph.add_graph_documents, (d) a raw UNWIND CREATE (the
ceiling: no deduplication, no provenance, nothing looked up).

    .venv/bin/python benchmarks/graph_write.py --captures 2000

Neo4j comes from MEMBRANE_TEST_NEO4J_URI/_USER/_PASSWORD_FILE (as
`scripts/neo4j-local env` prints them). (b) and (c) need APOC core in the
server and their packages outside .venv:

    .venv/bin/pip install --target .rig/anchors-graph neo4j-graphrag langchain-neo4j

With neo4j-rust-ext in .venv (the `fast` extra), copy its neo4j/_rust*.so into
.rig/anchors-graph/neo4j/ too, so every writer packs parameters the same way.

Each writer runs in its own subprocess (anchors with that folder on
PYTHONPATH); timing covers the writes only, the best of --repeat runs each on
an emptied graph (the development machine is shared and noisy), after one
untimed warm-up run, so no writer pays the JVM's warm-up for the others. A fact
is one entity mention or one relationship (9 per capture by default). After
every run the graph's nodes and relationships are counted and compared with
what that writer's model of the data must produce (expected_graph); a writer
whose counts differ (neo4j-graphrag without APOC writes no relationships) is
reported as failed with the counts, never with a rate. Every writer then writes
the same data a second time, to show what re-ingesting does; MemBrane's writers
must leave the graph as it was. The script exits 1 when a writer failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from checks import count_problems, exit_code, failed, failed_cell, mark, timed_runs  # noqa: E402

from tests.support.neo4j_env import neo4j_required  # noqa: E402

ANCHORS = ROOT / ".rig" / "anchors-graph"
WRITERS = ("membrane", "membrane-per-capture", "neo4j-graphrag", "langchain", "raw-create")
TYPES = ("DEPLOYED_ON", "DEPENDS_ON", "RUNS_ON", "BACKS_UP", "CONNECTS_TO", "MONITORS", "OWNS", "USES")


# ---------------------------------------------------------------- data


def synthetic(captures: int, entities: int, relationships: int, seed: int = 7) -> list[dict[str, Any]]:
    """Captures as plain dicts; entity names overlap across captures like real notes."""
    rng = random.Random(seed)
    vocabulary = [f"Entity {i:05d}" for i in range(max(entities * 2, captures * 2))]
    rows = []
    for i in range(captures):
        names = rng.sample(vocabulary, entities)
        rels = []
        while len(rels) < relationships:
            s, t = rng.sample(range(entities), 2)
            triple = (names[s], rng.choice(TYPES), names[t])
            if triple not in rels:
                rels.append(triple)
        rows.append(
            {
                "sha256": f"{i:064x}",
                "path": f"inbox/note-{i}.md",
                "ingested_at": f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:00:00Z",
                "entities": names,
                "relationships": rels,
            }
        )
    return rows


def expected_graph(writer: str, data: list[dict[str, Any]], writes: int = 1) -> dict[str, int]:
    """Nodes and relationships (migration nodes aside) the writer must leave after `writes` writes of `data`.

    membrane and langchain merge entities by name and relationships by ends and
    type: one node per capture and per distinct name, one MENTIONS per capture
    and name, one relationship per distinct triple. neo4j-graphrag keeps a node
    per capture and per name within it (its ids are per chunk), one FROM_CHUNK
    per mention and every relationship. raw-create creates everything each time.
    All but raw-create write the same graph again on a second write.
    """
    captures = len(data)
    mentions = sum(len(set(c["entities"])) for c in data)
    relationships = sum(len(set(map(tuple, c["relationships"]))) for c in data)
    names = len({n for c in data for n in c["entities"]})
    triples = len({tuple(r) for c in data for r in c["relationships"]})
    if writer in ("membrane", "membrane-per-capture", "langchain"):
        return {"nodes": captures + names, "relationships": mentions + triples}
    if writer == "neo4j-graphrag":
        return {"nodes": captures + mentions, "relationships": mentions + relationships}
    if writer == "raw-create":
        return {"nodes": writes * (captures + mentions), "relationships": writes * (mentions + relationships)}
    raise ValueError(f"unknown writer {writer!r}")


# ---------------------------------------------------------------- writers


def _neo4j_auth() -> tuple[str, tuple[str, str]]:
    server = neo4j_required()
    return server["uri"], (server["user"], server["password"])


def _membrane(data: list[dict[str, Any]], *, per_capture: bool) -> Any:
    from membrane.config import Settings
    from membrane.graph.store import GraphStore
    from membrane.resolve import Resolver
    from membrane.schema import Extraction

    uri, (user, password) = _neo4j_auth()
    settings = Settings.model_validate({"neo4j": {"uri": uri, "user": user, "password": password}})
    resolver = Resolver(settings)
    facts = [
        resolver.resolve(
            Extraction.parse(
                {
                    "entities": [{"name": n} for n in c["entities"]],
                    "relationships": [{"source": s, "relation": r, "target": t} for s, r, t in c["relationships"]],
                }
            ),
            sha256=c["sha256"],
            path=c["path"],
            ingested_at=c["ingested_at"],
            model="bench:model",
            prompt_version="v1",
        )
        for c in data
    ]
    store = GraphStore.connect(settings)
    store.migrate()

    def write() -> None:
        if per_capture:
            for f in facts:
                store.upsert(f)
        else:
            store.upsert_many(facts)

    return write


def _graphrag(data: list[dict[str, Any]]) -> Any:
    from neo4j import GraphDatabase
    from neo4j_graphrag.components.kg_writer import Neo4jWriter
    from neo4j_graphrag.components.types import Neo4jGraph, Neo4jNode, Neo4jRelationship

    uri, auth = _neo4j_auth()
    driver = GraphDatabase.driver(uri, auth=auth)
    nodes, rels = [], []
    for c in data:
        # As in its pipeline: node ids are unique per chunk, so each capture gets its own nodes.
        nodes.append(Neo4jNode(id=c["sha256"], label="Chunk", properties={"path": c["path"]}))
        for name in c["entities"]:
            nodes.append(Neo4jNode(id=f"{c['sha256']}:{name}", label="Entity", properties={"name": name}))
            rels.append(
                Neo4jRelationship(start_node_id=f"{c['sha256']}:{name}", end_node_id=c["sha256"], type="FROM_CHUNK")
            )
        for s, t_type, t in c["relationships"]:
            rels.append(
                Neo4jRelationship(
                    start_node_id=f"{c['sha256']}:{s}",
                    end_node_id=f"{c['sha256']}:{t}",
                    type=t_type,
                    properties={"source": c["sha256"]},
                )
            )
    graph = Neo4jGraph(nodes=nodes, relationships=rels)
    writer = Neo4jWriter(driver)
    return lambda: asyncio.run(writer.run(graph))


def _langchain(data: list[dict[str, Any]]) -> Any:
    from langchain_core.documents import Document
    from langchain_neo4j import Neo4jGraph
    from langchain_neo4j.graphs.graph_document import GraphDocument, Node, Relationship

    uri, (user, password) = _neo4j_auth()
    graph = Neo4jGraph(url=uri, username=user, password=password, refresh_schema=False)
    docs = []
    for c in data:
        nodes = {name: Node(id=name, type="Entity", properties={"name": name}) for name in c["entities"]}
        docs.append(
            GraphDocument(
                nodes=list(nodes.values()),
                relationships=[
                    Relationship(source=nodes[s], target=nodes[t], type=r) for s, r, t in c["relationships"]
                ],
                source=Document(page_content=c["path"], metadata={"id": c["sha256"]}),
            )
        )
    return lambda: graph.add_graph_documents(docs, include_source=True, baseEntityLabel=True)


_RAW = """
UNWIND $captures AS cap
CREATE (c:RawCapture {sha256: cap.sha256, path: cap.path, ingested_at: datetime(cap.ingested_at)})
WITH c, cap
CALL (c, cap) {
  UNWIND cap.entities AS name
  CREATE (c)-[:MENTIONS]->(e:RawEntity {key: name, name: name})
  RETURN collect(e) AS nodes
}
UNWIND cap.relationships AS rel
WITH nodes[rel[0]] AS s, nodes[rel[2]] AS t, rel, cap
CREATE (s)-[:$(rel[1]) {sources: [cap.sha256]}]->(t)
"""


def _raw(data: list[dict[str, Any]]) -> Any:
    from neo4j import GraphDatabase

    uri, auth = _neo4j_auth()
    driver = GraphDatabase.driver(uri, auth=auth)
    rows = [
        {**c, "relationships": [[c["entities"].index(s), r, c["entities"].index(t)] for s, r, t in c["relationships"]]}
        for c in data
    ]
    per_batch = max(1, 500 // (1 + len(data[0]["entities"]) + len(data[0]["relationships"])))

    def write() -> None:
        for i in range(0, len(rows), per_batch):
            driver.execute_query(_RAW, captures=rows[i : i + per_batch])

    return write


def run_writer(name: str, data: list[dict[str, Any]], repeat: int = 3) -> dict[str, Any]:
    build = {
        "membrane": lambda d: _membrane(d, per_capture=False),
        "membrane-per-capture": lambda d: _membrane(d, per_capture=True),
        "neo4j-graphrag": _graphrag,
        "langchain": _langchain,
        "raw-create": _raw,
    }[name]
    write = build(data)
    expected = expected_graph(name, data)
    # One untimed warm-up run, then `repeat` timed runs, each on an emptied graph (the
    # machine is shared: the best is reported); the graph is counted after every run.
    runs = timed_runs(write, repeat, before=_wipe, check=lambda: count_problems(expected, _graph_counts()))
    first = _graph_counts()
    started = time.perf_counter()
    write()
    again = time.perf_counter() - started
    second = _graph_counts()
    problems = runs.warmup_problems + runs.problems
    if name.startswith("membrane"):  # MemBrane promises that re-ingesting changes nothing
        problems += [f"after the 2nd write: {p}" for p in count_problems(expected_graph(name, data, 2), second)]
    return mark(
        {
            "writer": name,
            "seconds": runs.best,
            "timings": runs.seconds,
            "reingest_seconds": again,
            "expected": expected,
            "after_first": first,
            "after_second": second,
        },
        problems,
    )


def _graph_counts() -> dict[str, int]:
    from neo4j import GraphDatabase

    uri, auth = _neo4j_auth()
    with GraphDatabase.driver(uri, auth=auth) as driver:
        row = driver.execute_query(
            "CALL () { MATCH (n) WHERE NOT n:MembraneMigration RETURN count(n) AS nodes } "
            "CALL () { MATCH ()-[r]->() RETURN count(r) AS rels } RETURN nodes, rels"
        ).records[0]
    return {"nodes": row["nodes"], "relationships": row["rels"]}


def _wipe() -> None:
    from neo4j import GraphDatabase

    uri, auth = _neo4j_auth()
    with GraphDatabase.driver(uri, auth=auth) as driver, driver.session() as session:
        session.run(
            "MATCH (n) WHERE NOT n:MembraneMigration CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS"
        ).consume()


# ---------------------------------------------------------------- orchestration


def _child(args: argparse.Namespace) -> None:
    data = synthetic(args.captures, args.entities, args.relationships)
    print(json.dumps(run_writer(args.writer, data, args.repeat)))


def _spawn(name: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    if name in ("neo4j-graphrag", "langchain"):
        env["PYTHONPATH"] = str(ANCHORS)
    command = [
        sys.executable,
        __file__,
        "--writer",
        name,
        "--captures",
        str(args.captures),
        "--entities",
        str(args.entities),
        "--relationships",
        str(args.relationships),
        "--repeat",
        str(args.repeat),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return mark(
            {"writer": name},
            [
                done.stderr.strip().splitlines()[-1]
                if done.stderr.strip()
                else f"the writer's process exited {done.returncode}"
            ],
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(results: list[dict[str, Any]], facts: int) -> str:
    ceiling = next((r["seconds"] for r in results if r["writer"] == "raw-create" and not failed(r)), None)
    lines = [
        "| writer | seconds (best) | facts/s | x raw CREATE | 2nd write s | nodes after 1st / 2nd write "
        "| rels after 1st / 2nd write |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in results:
        if failed(r):  # no rate for work that was not done; the counts say what was
            nodes = rels = ""
            if "after_first" in r:
                nodes = (
                    f"{r['after_first']['nodes']} / {r['after_second']['nodes']} (expected {r['expected']['nodes']})"
                )
                rels = (
                    f"{r['after_first']['relationships']} / {r['after_second']['relationships']} "
                    f"(expected {r['expected']['relationships']})"
                )
            lines.append(f"| {r['writer']} | {failed_cell(r, 160)} | | | | {nodes} | {rels} |")
            continue
        ratio = f"{r['seconds'] / ceiling:.2f}" if ceiling else "-"
        lines.append(
            f"| {r['writer']} | {r['seconds']:.2f} | {facts / r['seconds']:,.0f} | {ratio} | "
            f"{r['reingest_seconds']:.2f} | "
            f"{r['after_first']['nodes']} / {r['after_second']['nodes']} | "
            f"{r['after_first']['relationships']} / {r['after_second']['relationships']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", type=int, default=2000)
    parser.add_argument("--entities", type=int, default=5)
    parser.add_argument("--relationships", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per writer; the best is reported")
    parser.add_argument("--writers", default=",".join(WRITERS), help=f"comma-separated subset of {WRITERS}")
    parser.add_argument("--writer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        _child(args)
        return
    facts = args.captures * (args.entities + args.relationships)
    results = []
    for name in args.writers.split(","):
        _wipe()
        result = _spawn(name, args)
        results.append(result)
        outcome = failed_cell(result) if failed(result) else f"{result['seconds']:.2f} s"
        print(f"{name}: {outcome}", file=sys.stderr, flush=True)
    _wipe()
    print(
        f"{args.captures} captures x ({args.entities} entities + {args.relationships} relationships) = {facts} facts\n"
    )
    print(_table(results, facts))
    raise SystemExit(exit_code(results))


if __name__ == "__main__":
    main()
