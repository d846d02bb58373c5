"""The Neo4j projection against a real server: migrations, idempotent upsert,
retraction, hostile input, concurrency, and plans without scans."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from membrane.cli import main
from membrane.config import Settings
from membrane.errors import GraphAuthFailed, GraphUnavailable, GraphWriteError
from membrane.graph.cypher import relationship_type_literal, write_queries
from membrane.graph.store import MIGRATIONS_DIR, GraphStore
from membrane.resolve import CaptureFacts, ResolvedEntity, ResolvedRelationship, Resolver
from membrane.schema import Extraction

pytestmark = pytest.mark.neo4j

MODEL = "embedded:smollm2-135m"


@pytest.fixture
def settings(make_settings: Callable[..., Settings], neo4j_settings: dict[str, Any]) -> Settings:
    return make_settings(neo4j={**neo4j_settings, "max_retry_time_s": 5})


@pytest.fixture
def store(neo4j: Any, settings: Settings) -> Iterator[GraphStore]:
    """A migrated store on an empty graph."""
    with GraphStore.connect(settings) as graph:
        graph.migrate()
        yield graph


def facts(
    settings: Settings,
    sha: str,
    entities: list[str],
    relationships: list[tuple[str, str, str]],
    *,
    at: str = "2026-11-28T12:00:00Z",
    model: str = MODEL,
    path: str | None = None,
) -> CaptureFacts:
    extraction = Extraction.parse(
        {
            "entities": [{"name": n} for n in entities],
            "relationships": [{"source": s, "relation": r, "target": t} for s, r, t in relationships],
        }
    )
    return Resolver(settings).resolve(
        extraction,
        sha256=sha * 64 if len(sha) == 1 else sha,
        path=path or f"inbox/{sha}.md",
        ingested_at=at,
        model=model,
        prompt_version="v1",
    )


def snapshot(driver: Any, *, with_ids: bool = True) -> tuple[list[Any], list[Any]]:
    """Every node and relationship with all properties (and element ids)."""
    nodes = driver.execute_query(
        "MATCH (n) WHERE NOT n:MembraneMigration "
        "RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS props ORDER BY id"
    ).records
    rels = driver.execute_query(
        "MATCH (a)-[r]->(b) RETURN elementId(r) AS id, type(r) AS type, properties(r) AS props, "
        "coalesce(a.key, a.sha256) AS a, coalesce(b.key, b.sha256) AS b ORDER BY id"
    ).records

    def keep(record: Any) -> dict[str, Any]:
        data = record.data()
        if not with_ids:
            data.pop("id")
        return data

    node_rows = [keep(r) for r in nodes]
    rel_rows = [keep(r) for r in rels]
    if not with_ids:
        node_rows.sort(key=repr)
        rel_rows.sort(key=repr)
    return node_rows, rel_rows


def triples(driver: Any) -> set[tuple[str, str, str]]:
    records = driver.execute_query(
        "MATCH (a:Entity)-[r]->(b:Entity) RETURN a.key AS a, type(r) AS t, b.key AS b"
    ).records
    return {(r["a"], r["t"], r["b"]) for r in records}


def entity_keys(driver: Any) -> set[str]:
    return {r["key"] for r in driver.execute_query("MATCH (e:Entity) RETURN e.key AS key").records}


# ---------------------------------------------------------------- migrations


def test_migrations_apply_once_and_create_constraints(pristine_neo4j: Any, settings: Settings) -> None:
    """The first run applies every migration and records it; the second applies none."""
    with GraphStore.connect(settings) as graph:
        first = graph.migrate()
        second = graph.migrate()
    names = sorted(p.name for p in MIGRATIONS_DIR.glob("*.cypher"))
    assert first == names and second == []
    constraints = {r["name"] for r in pristine_neo4j.execute_query("SHOW CONSTRAINTS YIELD name").records}
    assert {"entity_key", "capture_sha256", "membrane_migration_name"} <= constraints
    recorded = pristine_neo4j.execute_query("MATCH (m:MembraneMigration) RETURN m.name AS name").records
    assert sorted(r["name"] for r in recorded) == names


def test_two_processes_migrating_at_once_both_succeed(pristine_neo4j: Any, settings: Settings) -> None:
    """Concurrent migrators raise nothing and record each migration exactly once."""
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run() -> None:
        try:
            with GraphStore.connect(settings) as graph:
                barrier.wait()
                results.append(graph.migrate())
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    names = sorted(p.name for p in MIGRATIONS_DIR.glob("*.cypher"))
    assert sorted(results[0] + results[1]) == names
    count = pristine_neo4j.execute_query("MATCH (m:MembraneMigration) RETURN count(m) AS n").records[0]["n"]
    assert count == len(names)


def test_cli_migrate_applies_then_reports_up_to_date(
    pristine_neo4j: Any, neo4j_settings: dict[str, Any], tmp_path: Any
) -> None:
    """`membrane migrate` exits 0 and says what it applied, then that nothing is pending."""
    config = tmp_path / "membrane.toml"
    config.write_text(
        f'[neo4j]\nuri = "{neo4j_settings["uri"]}"\nuser = "{neo4j_settings["user"]}"\n'
        f'password = "{neo4j_settings["password"]}"\n',
        encoding="utf-8",
    )
    runner = CliRunner()
    first = runner.invoke(main, ["--config", str(config), "migrate"])
    second = runner.invoke(main, ["--config", str(config), "migrate"])
    assert first.exit_code == 0, first.output
    assert "applied 0001_constraints.cypher" in first.output
    assert second.exit_code == 0 and "up to date" in second.output


def test_cli_migrate_without_neo4j_is_a_usage_error(tmp_path: Any) -> None:
    """With neo4j.uri empty, `membrane migrate` exits 2 naming the key."""
    config = tmp_path / "membrane.toml"
    config.write_text('[neo4j]\nuri = ""\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(config), "migrate"])
    assert result.exit_code == 2
    assert "neo4j.uri" in result.output


# ---------------------------------------------------------------- connection errors


def test_unreachable_server_is_graph_unavailable(make_settings: Callable[..., Settings]) -> None:
    """A closed port gives the retryable GraphUnavailable, not a driver exception."""
    settings = make_settings(
        neo4j={"uri": "bolt://127.0.0.1:1", "password": "x", "connect_timeout_s": 1, "max_retry_time_s": 0}
    )
    with pytest.raises(GraphUnavailable):
        GraphStore.connect(settings)


def test_wrong_password_at_start_is_an_auth_failure(
    make_settings: Callable[..., Settings], neo4j_settings: dict[str, Any]
) -> None:
    """Refused credentials raise GraphAuthFailed, distinct from an outage, with a password hint."""
    settings = make_settings(neo4j={**neo4j_settings, "password": "wrong-password", "max_retry_time_s": 0})
    with pytest.raises(GraphAuthFailed) as caught:
        GraphStore.connect(settings)
    assert "password" in caught.value.hint
    assert "wrong-password" not in str(caught.value)


# ---------------------------------------------------------------- idempotence


def test_ingesting_the_same_capture_twice_changes_nothing(store: GraphStore, neo4j: Any, settings: Settings) -> None:
    """Nodes, relationships, every property and even element ids are identical after a re-ingest."""
    capture = facts(
        settings,
        "a",
        ["The Raspberry Pi", "Pi-hole", "Home Assistant"],
        [("Pi-hole", "deployed on", "raspberry pi"), ("Home Assistant", "DEPLOYED_ON", "The Raspberry Pi")],
    )
    store.upsert(capture)
    before = snapshot(neo4j)
    store.upsert(capture)
    store.upsert_many([capture])
    assert snapshot(neo4j) == before
    # Without the stored fingerprint the full merge path runs, and still changes nothing.
    neo4j.execute_query("MATCH (c:Capture) REMOVE c.fingerprint")
    store.upsert(capture)
    assert snapshot(neo4j) == before
    assert store.counts() == {"captures": 1, "entities": 3, "mentions": 3, "relationships": 2}
    pi = neo4j.execute_query("MATCH (e:Entity {key: 'raspberry pi'}) RETURN e").records[0]["e"]
    assert pi["aliases"] == ["The Raspberry Pi", "raspberry pi"]
    assert pi["name"] == "The Raspberry Pi"


def test_provenance_spans_the_supporting_captures(store: GraphStore, neo4j: Any, settings: Settings) -> None:
    """sources, first_seen, last_seen and model come from the captures, not the clock."""
    store.upsert(facts(settings, "b", [], [("nas", "backs up", "laptop")], at="2026-02-01T00:00:00Z", model="m:new"))
    store.upsert(facts(settings, "a", [], [("NAS", "backs up", "Laptop")], at="2026-01-01T00:00:00Z", model="m:old"))
    record = neo4j.execute_query(
        "MATCH (:Entity {key: 'nas'})-[r:BACKS_UP]->(:Entity {key: 'laptop'}) "
        "RETURN r, toString(r.first_seen) AS first, toString(r.last_seen) AS last"
    ).records[0]
    assert record["r"]["sources"] == ["a" * 64, "b" * 64]
    assert (record["first"], record["last"]) == ("2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z")
    assert record["r"]["model"] == "m:new"
    nas = neo4j.execute_query(
        "MATCH (e:Entity {key: 'nas'}) RETURN e.aliases AS aliases, toString(e.first_seen) AS first"
    ).records[0]
    assert nas["aliases"] == ["NAS", "nas"] and nas["first"] == "2026-01-01T00:00:00Z"


def test_batched_upsert_equals_one_by_one(store: GraphStore, neo4j: Any, settings: Settings) -> None:
    """upsert_many over small transactions writes the same graph as single upserts."""
    captures = [
        facts(
            settings,
            sha,
            ["Pi", f"service {sha}"],
            [(f"service {sha}", "runs on", "pi"), ("Pi", "in", "rack")],
            at=f"2026-01-0{i + 1}T00:00:00Z",
            model=f"m:{i % 2}",
        )
        for i, sha in enumerate("abcde")
    ]
    for capture in captures:
        store.upsert(capture)
    one_by_one = snapshot(neo4j, with_ids=False)
    neo4j.execute_query("MATCH (n) WHERE NOT n:MembraneMigration DETACH DELETE n")
    assert store.upsert_many(reversed(captures), batch_rows=8) > 1
    assert snapshot(neo4j, with_ids=False) == one_by_one


# ---------------------------------------------------------------- retraction


def test_deleting_a_capture_retracts_only_what_it_alone_supported(
    store: GraphStore, neo4j: Any, settings: Settings
) -> None:
    """A fact with two sources survives losing one; orphaned entities disappear; provenance is recomputed."""
    a = facts(
        settings,
        "a",
        ["Grafana"],
        [("NAS", "hosts", "Plex"), ("Plex", "uses", "GPU")],
        at="2026-01-01T00:00:00Z",
        model="m:a",
    )
    b = facts(settings, "b", [], [("nas", "hosts", "plex")], at="2026-03-01T00:00:00Z", model="m:b")
    store.upsert(a)
    store.upsert(b)
    store.retract(a.sha256)
    assert triples(neo4j) == {("nas", "HOSTS", "plex")}
    assert entity_keys(neo4j) == {"nas", "plex"}
    record = neo4j.execute_query(
        "MATCH ()-[r:HOSTS]->() RETURN r.sources AS sources, toString(r.first_seen) AS first, r.model AS model"
    ).records[0]
    assert record.data() == {"sources": ["b" * 64], "first": "2026-03-01T00:00:00Z", "model": "m:b"}
    nas = neo4j.execute_query("MATCH (e:Entity {key: 'nas'}) RETURN e").records[0]["e"]
    assert nas["aliases"] == ["nas"] and nas["name"] == "nas"
    store.retract(b.sha256)
    assert store.counts() == {"captures": 0, "entities": 0, "mentions": 0, "relationships": 0}
    store.retract(b.sha256)  # unknown capture: a no-op


def test_editing_a_capture_replaces_its_facts(store: GraphStore, neo4j: Any, settings: Settings) -> None:
    """replace() drops what only the old version stated and keeps what others support."""
    old = facts(settings, "a", [], [("NAS", "hosts", "Plex"), ("NAS", "runs", "TrueNAS")], path="inbox/n.md")
    other = facts(settings, "c", [], [("NAS", "runs", "TrueNAS")])
    new = facts(settings, "b", [], [("NAS", "hosts", "Jellyfin")], path="inbox/n.md", at="2026-12-01T00:00:00Z")
    store.upsert(old)
    store.upsert(other)
    store.replace(old.sha256, new)
    assert triples(neo4j) == {("nas", "HOSTS", "jellyfin"), ("nas", "RUNS", "truenas")}
    assert entity_keys(neo4j) == {"nas", "jellyfin", "truenas"}
    assert store.capture_shas() == {"b" * 64, "c" * 64}
    assert store.capture_for_path("inbox/n.md") == "b" * 64


def test_reprojecting_a_capture_with_new_facts_drops_the_stale_ones(
    store: GraphStore, neo4j: Any, settings: Settings
) -> None:
    """Upserting a known capture with different facts (a re-extraction) leaves only the new facts."""
    store.upsert(facts(settings, "a", ["Old Thing"], [("NAS", "hosts", "Plex")]))
    store.upsert(facts(settings, "a", [], [("NAS", "hosts", "Jellyfin")]))
    assert triples(neo4j) == {("nas", "HOSTS", "jellyfin")}
    assert entity_keys(neo4j) == {"nas", "jellyfin"}


# ---------------------------------------------------------------- safety

HOSTILE = [
    "Robert'); DROP TABLE captures;--",
    'say "hi"',
    "back`tick`",
    "}) DETACH DELETE n //",
    "line one\nline two",
    "rocket 🚀 launch",
    "עברית ‏RTL‏ text",
    "$param {x: 1}",
]


def test_hostile_names_are_stored_verbatim(store: GraphStore, neo4j: Any, settings: Settings) -> None:
    """Quotes, backticks, Cypher fragments, newlines, emoji and RTL text arrive as plain data."""
    capture = facts(settings, "a", HOSTILE, [(HOSTILE[3], "uses", HOSTILE[2])])
    store.upsert(capture)
    names = {r["name"] for r in neo4j.execute_query("MATCH (e:Entity) RETURN e.name AS name").records}
    assert names == set(HOSTILE)
    assert store.counts() == {"captures": 1, "entities": len(HOSTILE), "mentions": len(HOSTILE), "relationships": 1}


@pytest.mark.parametrize(
    "rel_type", ["X`]->() DETACH DELETE n //", "DEPLOYED_ON\n", "deployed_on", "A B", "", "_X", "É"]
)
def test_hostile_relation_type_never_reaches_a_query(
    store: GraphStore, neo4j: Any, settings: Settings, rel_type: str
) -> None:
    """A type outside the alphabet is refused before any write, and the graph is untouched."""
    store.upsert(facts(settings, "b", ["keep me"], []))
    before = snapshot(neo4j)
    forged = CaptureFacts(
        sha256="a" * 64,
        path="inbox/a.md",
        ingested_at="2026-11-28T12:00:00.000000Z",
        model=MODEL,
        captured_at="2026-11-28",
        captured_utc="2026-11-28T00:00:00.000000Z",
        prompt_version="v1",
        entities=(ResolvedEntity("x", "x", "subject", ("x",)), ResolvedEntity("y", "y", "object", ("y",))),
        relationships=(ResolvedRelationship("x", rel_type, "y"),),
    )
    with pytest.raises(GraphWriteError):
        relationship_type_literal(rel_type)
    with pytest.raises(GraphWriteError):
        store.upsert(forged)
    assert snapshot(neo4j) == before


def test_hostile_relation_from_the_model_is_normalised(store: GraphStore, neo4j: Any, settings: Settings) -> None:
    """Model text that looks like Cypher becomes a plain UPPER_SNAKE type."""
    store.upsert(facts(settings, "a", [], [("a", "x`]->() DETACH DELETE n //", "b")]))
    assert triples(neo4j) == {("a", "X_DETACH_DELETE_N", "b")}


def test_refused_write_names_the_capture(store: GraphStore, neo4j: Any, settings: Settings) -> None:
    """A write Neo4j refuses (here a constraint) becomes GraphWriteError naming the capture sha256."""
    neo4j.execute_query("CREATE CONSTRAINT test_one_capture_per_model FOR (c:Capture) REQUIRE c.model IS UNIQUE")
    try:
        store.upsert(facts(settings, "a", ["x"], []))
        with pytest.raises(GraphWriteError, match="b" * 64):
            store.upsert(facts(settings, "b", ["y"], []))
    finally:
        neo4j.execute_query("DROP CONSTRAINT test_one_capture_per_model IF EXISTS")
    assert store.capture_shas() == {"a" * 64}


def test_a_capture_twice_in_one_batch_is_written_once(store: GraphStore, neo4j: Any, settings: Settings) -> None:
    """upsert_many tolerates duplicates in its input: the last version of a capture counts."""
    first = facts(settings, "a", ["Old"], [])
    second = facts(settings, "a", ["New"], [])
    store.upsert_many([first, second])
    assert entity_keys(neo4j) == {"new"}
    assert store.counts()["captures"] == 1


# ---------------------------------------------------------------- concurrency


def test_concurrent_writers_create_no_duplicate_entities(neo4j: Any, settings: Settings) -> None:
    """Two writers upserting overlapping entities at once: one node per key, no error surfaces."""
    with GraphStore.connect(settings) as graph:
        graph.migrate()
    shared = ["Raspberry Pi", "NAS", "Router", "Switch", "Grafana", "Prometheus"]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def writer(prefix: str) -> None:
        try:
            with GraphStore.connect(settings) as graph:
                barrier.wait()
                for i in range(15):
                    names = shared[i % 3 :] + [f"{prefix} {i}"]
                    rels = [(names[j], "links", names[j + 1]) for j in range(len(names) - 1)]
                    graph.upsert(facts(settings, f"{prefix}{i:063d}", names, rels))
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(p,)) for p in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    rows = neo4j.execute_query("MATCH (e:Entity) RETURN e.key AS key, count(*) AS n").records
    assert all(r["n"] == 1 for r in rows)
    duplicates = neo4j.execute_query(
        "MATCH (e:Entity) WITH e.key AS key, count(*) AS n WHERE n > 1 RETURN count(*) AS d"
    ).records[0]["d"]
    assert duplicates == 0
    assert len(rows) == len(shared) + 30
    links = neo4j.execute_query("MATCH (:Entity {key: 'nas'})-[r:LINKS]->(:Entity {key: 'router'}) RETURN r").records
    assert len(links) == 1 and len(links[0]["r"]["sources"]) == 20


# ---------------------------------------------------------------- plans


def _operators(plan: dict[str, Any]) -> Iterator[str]:
    yield plan["operatorType"]
    for child in plan.get("children", []):
        yield from _operators(child)


SAMPLE_PARAMS: dict[str, Any] = {
    "shas": ["a"],
    "sha": "a",
    "keep": [],
    "keys": ["k"],
    "captures": [
        {
            "sha256": "a",
            "path": "p",
            "ingested_at": "2026-01-01T00:00:00Z",
            "model": "m",
            "prompt_version": "v1",
            "mentions": [{"key": "k", "role": "subject", "aliases": ["n"]}],
        }
    ],
    "entities": [
        {
            "key": "k",
            "name": "n",
            "aliases": ["n"],
            "first_seen": "2026-01-01T00:00:00Z",
            "last_seen": "2026-01-01T00:00:00Z",
        }
    ],
    "mentions": [{"key": "k", "role": "subject", "aliases": ["n"]}],
    "relationships": [
        {
            "source": "k",
            "type": "USES",
            "target": "j",
            "sources": ["a"],
            "first_seen": "2026-01-01T00:00:00Z",
            "last_seen": "2026-01-01T00:00:00Z",
            "model": "m",
        }
    ],
}


@pytest.mark.parametrize("name", sorted(write_queries()))
def test_write_plans_use_index_seeks_not_scans(store: GraphStore, neo4j: Any, name: str) -> None:
    """EXPLAIN of every upsert and retract query shows no all-nodes, label or relationship scan."""
    query = write_queries()[name]
    plan = neo4j.execute_query("EXPLAIN " + query, SAMPLE_PARAMS).summary.plan
    operators = list(_operators(plan))
    scans = [
        op
        for op in operators
        if any(s in op for s in ("AllNodesScan", "LabelScan", "RelationshipsScan", "RelationshipTypeScan"))
    ]
    assert scans == [], f"{name}: {operators}"
    assert any("Seek" in op for op in operators), f"{name}: {operators}"
