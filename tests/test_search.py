"""`membrane search` against a real Neo4j and against the journal alone, on the
same captures: the same answers, the ranking, hostile queries, the journal's
index kept current, and capture text on :Capture (graph.store_text)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from membrane.graph import cypher
from membrane.graph.cypher import lucene_query
from membrane.journal.search import fts_query
from membrane.search import MAX_TERMS, search_terms
from tests.support.explore import EXAMPLE_ANSWERS, EXTRA_NOTES, HOSTILE, Stores, cli, ingest_both

ENTITY_NAMES = sorted(
    {e["name"] for a in EXAMPLE_ANSWERS.values() for e in a["entities"]}
    | {e["name"] for _, a in EXTRA_NOTES.values() for e in a["entities"]}
)
QUERIES = [
    *ENTITY_NAMES,
    "rasp",
    "pi",
    "nas",
    "the raspberry pi",
    "alice nextcloud",
    "planning",
    "polonium paris",
    "supplier graph",
    "DEPLOYED",
    "garage",
    "nextclould",
    "nothing matches this",
    "O'Brien",
    "12",
]
# Full-text syntax of both stores, and text that tries to leave a query.
HOSTILE_QUERIES = [
    "title:alice",
    "alice*",
    "alice~2",
    "alice AND NOT bob",
    '"unclosed',
    "NEAR(alice bob)",
    "alice OR",
    "-alice",
    "+alice",
    "\\",
    "a\\\\b",
    "{!lucene}alice",
    "*:*",
    "x'}) DETACH DELETE n //",
    "$key",
    "`Entity`",
    "alice) OR (bob",
    "name: ^alice",
    "[a TO z]",
    "alice\x00bob",
    "\u202ealice",
]


# ---------------------------------------------------------------- words, without a store


def test_search_terms_cut_words_as_lucene_does() -> None:
    """Words are lower-cased letter and digit runs; `.`, `'` and `:` inside a word keep it whole; each once."""
    assert search_terms("Node.js and NODE.JS, O'Brien's pi-hole") == ("node.js", "and", "o'brien's", "pi", "hole")
    assert search_terms("  ¿?!  ") == ()
    assert search_terms(" ".join(f"w{i}" for i in range(40))) == tuple(f"w{i}" for i in range(MAX_TERMS))


def test_store_queries_hold_every_word_as_a_term_only() -> None:
    """Lucene special characters are escaped and FTS5 strings quoted: a word is never syntax."""
    assert lucene_query(["a+b", "c:d", "e\\f", "*"]) == "a\\+b* AND c\\:d* AND e\\\\f* AND \\**"
    assert (
        lucene_query(["alice"], match="fuzzy") == "alice~" and lucene_query(["o'b", "x"], match="word") == "o'b AND x"
    )
    assert fts_query(['say "hi"', "x"]) == '"say ""hi"""* AND "x"*'
    assert fts_query(["x"], prefix=False) == '"x"'


# ---------------------------------------------------------------- both stores


@pytest.fixture
def stores(tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]) -> Stores:
    return ingest_both(tmp_path, neo4j_settings)


def both(stores: Stores, *args: str) -> tuple[Any, Any]:
    return cli(stores.journal_only, *args), cli(stores.neo4j, *args)


@pytest.mark.neo4j
def test_search_is_identical_from_neo4j_and_the_journal(stores: Stores) -> None:
    """Every entity name and a set of word queries give the same JSON and text from both stores."""
    for query in QUERIES:
        for args in (("search", query, "--json"), ("search", query), ("search", query, "--limit", "1", "--json")):
            journal, graph = both(stores, *args)
            assert journal.exit_code == graph.exit_code == 0, (args, journal.stderr, graph.stderr)
            assert journal.stdout == graph.stdout, args
    for name in ENTITY_NAMES:
        answer = json.loads(cli(stores.neo4j, "search", name, "--json").stdout)
        assert answer["entities"][0]["name"] == name, name
        assert answer["entities"][0]["match"] == "key"


@pytest.mark.neo4j
def test_hits_rank_by_name_then_newest_capture(stores: Stores) -> None:
    """The key match comes first, words match as prefixes, facts and the newest capture come with each entity."""
    answer = json.loads(cli(stores.journal_only, "search", "raspberry pi", "--json").stdout)
    pi = answer["entities"][0]
    assert (pi["name"], pi["match"]) == ("Raspberry Pi", "key")
    assert [(f["source"], f["type"], f["target"]) for f in pi["facts"]] == [
        ("NAS1", "NEAR", "Raspberry Pi"),
        ("Debian 12", "RUNS_ON", "Raspberry Pi"),
        ("Nextcloud", "RUNS_ON", "Raspberry Pi"),
    ]
    captures = answer["captures"]
    assert sorted(c["capture"]["path"] for c in captures) == ["again.txt", "homelab.txt"]
    stamps = [c["capture"]["ingested_at"] for c in captures]
    assert stamps == sorted(stamps, reverse=True)
    assert pi["capture"] == captures[0]["capture"]  # both name the Pi: the newest is behind the hit
    nas = json.loads(cli(stores.neo4j, "search", "nas", "--json").stdout)["entities"]
    assert [e["name"] for e in nas] == ["NAS1", "NAS2"] and {e["match"] for e in nas} == {"words"}
    meeting = json.loads(cli(stores.neo4j, "search", "planning", "--json").stdout)["captures"][0]["capture"]
    assert (meeting["title"], meeting["captured_at"]) == ("Planning call", "2026-03-14T09:30:00+00:00")
    snippet = json.loads(cli(stores.neo4j, "search", "supplier", "--json").stdout)["captures"][0]["snippet"]
    assert "supplier graph" in snippet


@pytest.mark.neo4j
def test_hostile_queries_are_words_only_and_change_nothing(
    stores: Stores, neo4j: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Full-text syntax and Cypher look-alikes in a query are searched as words (same answer from both
    stores, no error); Neo4j only ever receives the fixed search queries with the words as parameters."""
    from neo4j import ManagedTransaction

    sent: list[tuple[str, dict[str, Any]]] = []
    real_run = ManagedTransaction.run

    def spy(self: Any, query: Any, parameters: Any = None, **kwargs: Any) -> Any:
        sent.append((str(query), dict(parameters or {}, **kwargs)))
        return real_run(self, query, parameters, **kwargs)

    count = "MATCH (n) RETURN count(n) AS n"
    before = neo4j.execute_query(count).records[0]["n"]
    monkeypatch.setattr(ManagedTransaction, "run", spy)
    for query in [*HOSTILE_QUERIES, *HOSTILE.values()]:
        journal, graph = both(stores, "search", "--json", "--", query)
        if not search_terms(query):
            assert journal.exit_code == graph.exit_code == 2, query
            assert "no words" in graph.stderr
            continue
        assert journal.exit_code == graph.exit_code == 0, (query, journal.stderr, graph.stderr)
        assert journal.stdout == graph.stdout, query
    monkeypatch.undo()
    fixed = {cypher.SEARCH, cypher.SEARCH_DETAILS, cypher.PING}
    assert {query for query, _ in sent} <= fixed
    assert neo4j.execute_query(count).records[0]["n"] == before
    found = json.loads(cli(stores.neo4j, "search", HOSTILE["cypher"], "--json").stdout)
    assert found["entities"][0]["name"] == HOSTILE["cypher"]


@pytest.mark.neo4j
def test_fuzzy_matching_finds_a_misspelt_name_as_ingestion_would(
    tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """With graph.fuzzy_threshold set, a misspelt name finds the entity first (match "fuzzy"), from both stores;
    with it off (the default) it finds nothing."""
    stores = ingest_both(tmp_path, neo4j_settings, graph={"fuzzy_threshold": 85})
    journal, graph = both(stores, "search", "raspbery pi", "--json")
    assert journal.exit_code == graph.exit_code == 0, (journal.stderr, graph.stderr)
    assert journal.stdout == graph.stdout
    first = json.loads(graph.stdout)["entities"][0]
    assert (first["name"], first["match"]) == ("Raspberry Pi", "fuzzy") and first["facts"]
    for config in (stores.journal_only, stores.neo4j):
        config.write_text(
            config.read_text(encoding="utf-8").replace("fuzzy_threshold = 85", "fuzzy_threshold = 0"), encoding="utf-8"
        )
    assert json.loads(cli(stores.neo4j, "search", "raspbery pi", "--json").stdout)["entities"] == []


@pytest.mark.neo4j
def test_search_before_the_fulltext_migration_names_the_fix(stores: Stores, neo4j: Any) -> None:
    """Without the full-text indexes (a graph not migrated since the upgrade), search exits 1 and says to migrate."""
    neo4j.execute_query("DROP INDEX entity_names")
    neo4j.execute_query("MATCH (m:MembraneMigration {name: '0002_fulltext.cypher'}) DELETE m")
    result = cli(stores.neo4j, "search", "alice")
    assert result.exit_code == 1 and "membrane migrate" in result.stderr
    assert cli(stores.neo4j, "migrate").exit_code == 0
    assert json.loads(cli(stores.neo4j, "search", "alice", "--json").stdout)["entities"][0]["name"] == "Alice"


# ---------------------------------------------------------------- the journal's index


def test_the_journal_index_follows_retractions_and_edits(tmp_path: Path) -> None:
    """A forgotten capture leaves the journal's index; an edited one is found by its new words only."""
    from tests.support.explore import fill_inbox
    from tests.support.pipeline import settings_sections, toml_text

    inbox = tmp_path / "inbox"
    replay = fill_inbox(inbox)
    config = tmp_path / "membrane.toml"
    config.write_text(toml_text(settings_sections(tmp_path, replay)), encoding="utf-8")
    assert cli(config, "ingest").exit_code == 0
    before = json.loads(cli(config, "search", "polonium", "--json").stdout)
    assert [c["capture"]["path"] for c in before["captures"]] == ["reading.json"]
    assert [e["name"] for e in before["entities"]] == ["polonium"]
    assert cli(config, "forget", str(inbox / "processed" / "reading.json")).exit_code == 0
    after = json.loads(cli(config, "search", "polonium", "--json").stdout)
    assert after["captures"] == [] and after["entities"] == []
    # Alice stays: other captures still name her.
    alice = json.loads(cli(config, "search", "alice", "--json").stdout)["entities"]
    assert [e["name"] for e in alice] == ["Alice"]


def test_a_query_without_words_is_a_usage_error(tmp_path: Path) -> None:
    """Punctuation only exits 2 with the reason, before anything is read."""
    config = tmp_path / "membrane.toml"
    config.write_text(f'[journal]\npath = "{tmp_path / "j.sqlite3"}"\n', encoding="utf-8")
    result = cli(config, "search", "?!*")
    assert result.exit_code == 2 and "has no words" in result.stderr


# ---------------------------------------------------------------- text on :Capture


@pytest.mark.neo4j
def test_captures_carry_text_title_and_date_unless_text_storage_is_off(
    tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """:Capture holds text, title and date; with graph.store_text off only the date, and search finds
    captures in the journal instead; turning it on again and syncing writes the text back."""
    stores = ingest_both(tmp_path, neo4j_settings)
    query = "MATCH (c:Capture {path: 'meeting-notes.md'}) RETURN c.title AS title, c.text AS text, c.captured_at AS at"
    row = neo4j.execute_query(query).records[0]
    assert row["title"] == "Planning call" and "supplier graph" in row["text"]
    assert row["at"] == "2026-03-14T09:30:00+00:00"
    with_text = cli(stores.neo4j, "search", "supplier", "--json").stdout
    config = stores.neo4j.read_text(encoding="utf-8") + "\n[graph]\nstore_text = false\n"
    stores.neo4j.write_text(config, encoding="utf-8")
    assert cli(stores.neo4j, "sync").exit_code == 0
    row = neo4j.execute_query(query).records[0]
    assert (row["title"], row["text"], row["at"]) == (None, None, "2026-03-14T09:30:00+00:00")
    assert neo4j.execute_query("MATCH (c:Capture) WHERE c.text IS NOT NULL RETURN count(c) AS n").records[0]["n"] == 0
    without = json.loads(cli(stores.neo4j, "search", "supplier", "--json").stdout)
    assert [c["capture"]["path"] for c in without["captures"]] == ["meeting-notes.md"]
    assert without["captures"] == json.loads(with_text)["captures"]
    stores.neo4j.write_text(config.replace("store_text = false", "store_text = true"), encoding="utf-8")
    assert cli(stores.neo4j, "sync").exit_code == 0
    assert neo4j.execute_query(query).records[0]["title"] == "Planning call"
