"""`membrane show` and `membrane facts` against a real Neo4j and against the
journal alone, on the same captures; the saved questions in membrane/queries."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from membrane.graph import cypher
from membrane.graph.questions import QUERIES_DIR, saved_questions
from membrane.graph.store import GraphStore
from tests.support.explore import EXAMPLE_ANSWERS, EXTRA_NOTES, HOSTILE, Stores, cli, ingest_both

pytestmark = pytest.mark.neo4j

ENTITY_NAMES = sorted(
    {e["name"] for a in EXAMPLE_ANSWERS.values() for e in a["entities"]}
    | {e["name"] for _, a in EXTRA_NOTES.values() for e in a["entities"]}
)
CAPTURES = sorted([*EXAMPLE_ANSWERS, *EXTRA_NOTES])


@pytest.fixture
def stores(tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]) -> Stores:
    return ingest_both(tmp_path, neo4j_settings)


def both(stores: Stores, *args: str, env: dict[str, str] | None = None) -> tuple[Any, Any]:
    return cli(stores.journal_only, *args, env=env), cli(stores.neo4j, *args, env=env)


# ---------------------------------------------------------------- same answers from both stores


def test_show_is_identical_from_neo4j_and_the_journal(stores: Stores) -> None:
    """Every entity of the captures prints the same text and the same JSON from Neo4j and from the journal alone."""
    for name in ENTITY_NAMES:
        for args in (("show", name), ("show", name, "--json")):
            journal, graph = both(stores, *args)
            assert journal.exit_code == graph.exit_code == 0, (args, journal.stderr, graph.stderr)
            assert journal.stdout == graph.stdout, args
    report = json.loads(cli(stores.neo4j, "show", "nextcloud", "--json").stdout)
    assert report["aliases"] == ["Nextcloud"]
    assert [(f["direction"], f["type"], f["other_name"]) for f in report["facts"]] == [
        ("out", "RUNS_ON", "Raspberry Pi"),
        ("in", "DEPLOYED", "Alice"),
    ]
    deployed = report["facts"][1]
    assert sorted(s["path"] for s in deployed["sources"]) == ["again.txt", "homelab.txt"]
    assert deployed["sources"] == sorted(deployed["sources"], key=lambda s: (s["captured_at"], s["sha256"]))
    assert deployed["model"] == "replay:recorded"
    assert report["first_seen"] <= report["last_seen"]


def test_facts_is_identical_from_neo4j_and_the_journal(stores: Stores) -> None:
    """Every capture, named by path or by sha256, prints the same facts from Neo4j and from the journal alone."""
    for path in CAPTURES:
        journal, graph = both(stores, "facts", str(stores.inbox / path), "--json")
        assert journal.exit_code == graph.exit_code == 0, (path, journal.stderr, graph.stderr)
        assert journal.stdout == graph.stdout, path
        sha = json.loads(graph.stdout)["sha256"]
        journal, graph = both(stores, "facts", sha)
        assert journal.exit_code == graph.exit_code == 0
        assert journal.stdout == graph.stdout, path
        assert cli(stores.journal_only, "facts", sha[:12]).stdout == graph.stdout  # the prefix `show` prints
    homelab = json.loads(cli(stores.neo4j, "facts", str(stores.inbox / "homelab.txt"), "--json").stdout)
    assert [(f["source_name"], f["type"], f["target_name"], f["other_sources"]) for f in homelab["facts"]] == [
        ("Alice", "DEPLOYED", "Nextcloud", 1),
        ("Debian 12", "RUNS_ON", "Raspberry Pi", 0),
        ("Nextcloud", "RUNS_ON", "Raspberry Pi", 0),
    ]
    processed = cli(stores.neo4j, "facts", str(stores.inbox / "processed" / "homelab.txt"), "--json")
    assert json.loads(processed.stdout) == homelab


def test_show_text_names_relationships_sources_and_dates(stores: Stores) -> None:
    """The text of `show` lists aliases, both directions with their type, and each fact's captures."""
    out = cli(stores.journal_only, "show", "the raspberry pi").stdout
    assert out.splitlines()[0] == "Raspberry Pi  (key: raspberry pi)"
    assert "<-[:RUNS_ON]- Debian 12" in out and "<-[:RUNS_ON]- Nextcloud" in out and "<-[:NEAR]- NAS1" in out
    assert re.search(r"^        \d{4}-\d\d-\d\dT[\d:.]+Z  homelab\.txt  replay:recorded  [0-9a-f]{12}$", out, re.M)
    assert "mentioned in 2 capture(s):" in out


# ---------------------------------------------------------------- hostile names


def test_hostile_names_print_verbatim_and_never_reach_the_cypher(
    stores: Stores, neo4j: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quotes, backticks, Cypher look-alikes and RTL names print as written, from both stores, and every query
    Neo4j receives is a fixed text with the name only in its parameters."""
    from neo4j import ManagedTransaction

    sent: list[tuple[str, dict[str, Any]]] = []
    real_run = ManagedTransaction.run

    def spy(self: Any, query: Any, parameters: Any = None, **kwargs: Any) -> Any:
        sent.append((str(query), dict(parameters or {}, **kwargs)))
        return real_run(self, query, parameters, **kwargs)

    before = neo4j.execute_query("MATCH (n) RETURN count(n) AS n").records[0]["n"]
    monkeypatch.setattr(ManagedTransaction, "run", spy)
    for name in (n for k, n in HOSTILE.items() if k != "override"):
        journal, graph = both(stores, "show", name)
        assert journal.exit_code == graph.exit_code == 0, (name, journal.stderr, graph.stderr)
        assert journal.stdout == graph.stdout
        assert journal.stdout.splitlines()[0].startswith(f"{name}  (key: ")
        as_json = json.loads(cli(stores.neo4j, "show", name, "--json").stdout)
        assert as_json["name"] == name
    facts = cli(stores.neo4j, "facts", str(stores.inbox / "hostile.txt")).stdout
    assert f"{HOSTILE['quote']} -[:MAINTAINS]-> {HOSTILE['cypher']}  (only this capture)" in facts
    monkeypatch.undo()
    fixed = {q.query for q in saved_questions().values()} | {cypher.ENTITY_NAMES, cypher.PING}
    assert {query for query, _ in sent} <= fixed
    assert not any(name in query for query, _ in sent for name in HOSTILE.values())
    assert {"key": "x detach delete n"} in [params for _, params in sent]
    assert neo4j.execute_query("MATCH (n) RETURN count(n) AS n").records[0]["n"] == before


def test_an_entity_row_with_null_properties_is_not_a_name(
    stores: Stores, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """A read at read-committed returns a node that a retraction deleted mid-read with null properties (CI met
    it in a polled snapshot). A bare :Entity node gives that row: entity_names and the tests' graph_snapshot drop
    it, and `show` answers as from the journal."""
    from membrane.config import Settings
    from tests.support.pipeline import graph_snapshot

    before = graph_snapshot(neo4j)
    neo4j.execute_query("CREATE (:Entity)")
    assert None in [r["key"] for r in neo4j.execute_query("MATCH (e:Entity) RETURN e.key AS key").records]
    with GraphStore.connect(Settings.model_validate({"neo4j": neo4j_settings})) as graph:
        names = graph.entity_names()
    assert names and all(r["key"] is not None and isinstance(r["aliases"], list) for r in names)
    assert graph_snapshot(neo4j) == before
    journal, shown = both(stores, "show", "nextcloud", "--json")
    assert journal.exit_code == shown.exit_code == 0, shown.stderr
    assert journal.stdout == shown.stdout


def test_format_characters_in_a_name_are_escaped_in_text(stores: Stores) -> None:
    """A right-to-left override in a name prints as an escape in text (it cannot reorder the terminal line) and
    verbatim in JSON."""
    name = HOSTILE["override"]
    out = cli(stores.neo4j, "show", name)
    assert out.exit_code == 0, out.stderr
    assert "\u202e" not in out.stdout
    assert out.stdout.splitlines()[0].startswith("invoice\\u202eexe.pdf  (key: ")
    assert json.loads(cli(stores.neo4j, "show", name, "--json").stdout)["name"] == name


# ---------------------------------------------------------------- resolution


def test_unknown_name_lists_close_candidates_and_exits_1(stores: Stores) -> None:
    """A name no entity has exits 1 and offers the closest entities, from both stores alike."""
    journal, graph = both(stores, "show", "Raspbery")
    assert journal.exit_code == graph.exit_code == 1
    assert journal.stderr == graph.stderr
    assert "no entity is called 'Raspbery'" in graph.stderr
    assert "    Raspberry Pi (key 'raspberry pi', score" in graph.stderr
    as_json = json.loads(cli(stores.neo4j, "show", "Raspbery", "--json").stdout)
    assert as_json["candidates"][0].startswith("Raspberry Pi")


def test_fuzzy_matching_resolves_like_ingestion_and_a_tie_is_ambiguous(
    tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """With graph.fuzzy_threshold set (at ingestion and now), a misspelt name finds its entity, a surface form
    ingestion merged finds the entity it joined, and a name equally close to two entities lists both."""
    stores = ingest_both(tmp_path, neo4j_settings, graph={"fuzzy_threshold": 80})
    journal, graph = both(stores, "show", "Nextclod")
    assert journal.exit_code == graph.exit_code == 0, graph.stderr
    assert graph.stdout.startswith("Nextcloud  (key: nextcloud)") and journal.stdout == graph.stdout
    assert "aliases     Nextcloud, Nextclould" in graph.stdout
    journal, graph = both(stores, "show", "Nextclould")  # an alias, found before any fuzzy match
    assert journal.stdout == graph.stdout and graph.stdout.startswith("Nextcloud  (key: nextcloud)")
    journal, graph = both(stores, "show", "NAS")
    assert journal.exit_code == graph.exit_code == 1
    assert "'NAS' fits 2 entities" in graph.stderr and journal.stderr == graph.stderr
    assert "NAS1 (key 'nas1'" in graph.stderr and "NAS2 (key 'nas2'" in graph.stderr
    off = {"MEMBRANE_GRAPH__FUZZY_THRESHOLD": "0"}
    assert cli(stores.neo4j, "show", "Nextclod", env=off).exit_code == 1  # fuzzy off: no guess


def test_unknown_capture_exits_1_with_a_hint(stores: Stores) -> None:
    """`facts` on a path or sha256 the journal holds no facts for exits 1 and says where to look."""
    for target in ("nowhere.txt", "0" * 64):
        journal, graph = both(stores, "facts", target)
        assert journal.exit_code == graph.exit_code == 1
        assert f"no capture with facts matches {target!r}" in graph.stderr
        assert "membrane status" in graph.stderr


# ---------------------------------------------------------------- the saved questions


def test_every_saved_question_is_a_browser_favourite_whose_params_match_its_query() -> None:
    """Each file opens with its title, sets every $parameter of its query with a :param line, and sets no other."""
    questions = saved_questions()
    assert set(questions) == {"entity", "capture", "recent", "hubs", "single-source", "path"}
    for question in questions.values():
        assert question.text.startswith("// MemBrane: "), question.name
        used = set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", question.query))
        assert used == set(question.params), question.name
        assert ":param" not in question.query and "//" not in question.query
    assert len(list(QUERIES_DIR.glob("*.cypher"))) == len(questions)


def test_every_saved_question_runs_on_the_graph(stores: Stores, neo4j_settings: dict[str, Any]) -> None:
    """All six saved questions run against the ingested graph with the parameters their :param lines name."""
    from datetime import UTC, datetime, timedelta

    from membrane.config import Settings

    settings = Settings.model_validate({"neo4j": neo4j_settings})
    with GraphStore.connect(settings) as graph:
        sha = graph.capture_for_path("homelab.txt")
        answers = {
            "entity": graph.ask("entity", key="alice"),
            "capture": graph.ask("capture", sha256=sha),
            "recent": graph.ask("recent", since=datetime.now(UTC) - timedelta(days=1), limit=25),
            "hubs": graph.ask("hubs", limit=3),
            "single-source": graph.ask("single-source", limit=50),
            "path": graph.ask("path", from_key="alice", to_key="debian 12"),
        }
        with pytest.raises(ValueError, match="needs the parameters key"):
            graph.ask("entity")
    assert [f["other"]["name"] for f in answers["entity"][0]["facts"]] == ["Nextcloud"]
    assert len(answers["recent"]) == len(CAPTURES)
    assert answers["hubs"][0]["entity"]["name"] == "Raspberry Pi" and answers["hubs"][0]["facts"] == 3
    assert {r["entity"]["name"] for r in answers["single-source"]} >= {"Debian 12", "Bob", "Paris"}
    assert "Alice" not in {r["entity"]["name"] for r in answers["single-source"]}
    path = answers["path"][0]["path"]
    assert path is not None
