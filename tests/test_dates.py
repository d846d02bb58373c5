"""A capture's own date, from every format into the journal and onto :Capture in
a real Neo4j: it dates the facts it supports, `membrane show` prints it as the
note writes it (from both stores alike), and ingesting the same notes again
gives the same graph."""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from membrane.capture import read_capture
from membrane.config import InboxSettings
from membrane.journal import Journal
from tests.support.documents import Document, eml_bytes, pdf_bytes
from tests.support.explore import Stores, cli
from tests.support.pipeline import settings_sections, toml_text, write_replay

pytestmark = pytest.mark.neo4j

ANSWER = json.dumps(
    {
        "entities": [{"name": "Alice", "role": "subject"}, {"name": "Nextcloud", "role": "object"}],
        "relationships": [{"source": "Alice", "relation": "DEPLOYED", "target": "Nextcloud"}],
    }
)
MTIME = datetime(2021, 2, 3, 4, 5, 6, tzinfo=UTC)

# name -> (bytes, the date the capture takes, as the note writes it)
NOTES: dict[str, tuple[bytes, str]] = {
    "plain.txt": (b"Alice deployed Nextcloud.\n", "2021-02-03T04:05:06Z"),
    "dated.md": (b"---\ndate: 2024-03-05\ntags: [home]\n---\nAlice deployed Nextcloud on the NAS.\n", "2024-03-05"),
    "reading.json": (
        json.dumps({"text": "Alice deployed Nextcloud again.", "captured_at": "2023-12-31T23:30:00Z"}).encode(),
        "2023-12-31T23:30:00Z",
    ),
    "mail.eml": (
        eml_bytes(
            Document(
                ("Alice deployed Nextcloud for the family.",),
                title="Nextcloud",
                date=datetime(2025, 1, 2, 8, 0, tzinfo=timezone(timedelta(hours=1))),
            )
        ),
        "2025-01-02T08:00:00+01:00",
    ),
    "office.pdf": (
        pdf_bytes(Document(("Alice deployed Nextcloud at the office.",), date=datetime(2022, 6, 1, 12, 0, tzinfo=UTC))),
        "2022-06-01T12:00:00Z",
    ),
}


def fill(inbox: Path, notes: dict[str, tuple[bytes, str]]) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in notes.items():
        (inbox / name).write_bytes(data)
        os.utime(inbox / name, (MTIME.timestamp(), MTIME.timestamp()))


def ingest(tmp: Path, neo4j: dict[str, Any], notes: dict[str, tuple[bytes, str]] = NOTES) -> Stores:
    """The notes ingested on the journal alone, then `membrane sync`ed into Neo4j."""
    inbox = tmp / "inbox"
    fill(inbox, notes)
    texts = [read_capture(inbox / name, InboxSettings(path=inbox)).text for name in notes]
    replay = write_replay(tmp / "replay.jsonl", [(text, ANSWER) for text in texts])
    stores = Stores(tmp / "journal-only.toml", tmp / "neo4j.toml", inbox)
    stores.journal_only.write_text(toml_text(settings_sections(tmp, replay)), encoding="utf-8")
    stores.neo4j.write_text(toml_text(settings_sections(tmp, replay, neo4j=neo4j)), encoding="utf-8")
    assert cli(stores.journal_only, "ingest").exit_code == 0
    assert cli(stores.neo4j, "sync").exit_code == 0
    return stores


def snapshot(driver: Any) -> dict[str, Any]:
    """Every node and relationship with all its properties (DATETIMEs as ISO text) and element id."""

    def plain(props: dict[str, Any]) -> dict[str, Any]:
        return {k: v.iso_format() if hasattr(v, "iso_format") else v for k, v in sorted(props.items())}

    nodes = driver.execute_query(
        "MATCH (n) RETURN elementId(n) AS id, labels(n) AS labels, properties(n) AS p ORDER BY id"
    ).records
    edges = driver.execute_query(
        "MATCH ()-[r]->() RETURN elementId(r) AS id, type(r) AS type, properties(r) AS p ORDER BY id"
    ).records
    return {
        "nodes": [(r["id"], r["labels"], plain(r["p"])) for r in nodes],
        "edges": [(r["id"], r["type"], plain(r["p"])) for r in edges],
    }


def fact(driver: Any) -> dict[str, Any]:
    rows = driver.execute_query(
        "MATCH (:Entity {key: 'alice'})-[r:DEPLOYED]->(:Entity {key: 'nextcloud'}) "
        "RETURN r.first_seen AS first, r.last_seen AS last, r.model AS model"
    ).records
    [row] = rows
    return {"first": row["first"].to_native(), "last": row["last"].to_native(), "model": row["model"]}


def test_each_format_dates_its_capture_in_the_journal_and_the_graph(
    tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """Front matter, JSON, e-mail Date, PDF CreationDate and a plain file's mtime date each capture,
    kept as the note writes it in the journal and on :Capture (`captured_at`), normalised in `captured_utc`."""
    ingest(tmp_path, neo4j_settings)
    with Journal(tmp_path / "journal.sqlite3") as journal:
        dated = {record.path: record.captured_at for record in journal.captures.in_states()}
    assert dated == {name: date for name, (_, date) in NOTES.items()}
    rows = neo4j.execute_query(
        "MATCH (c:Capture) RETURN c.path AS path, c.captured_at AS date, c.captured_utc AS at"
    ).records
    assert {r["path"]: r["date"] for r in rows} == dated
    at = {r["path"]: r["at"].to_native() for r in rows}
    assert at["mail.eml"] == datetime(2025, 1, 2, 7, 0, tzinfo=UTC)
    assert at["dated.md"] == datetime(2024, 3, 5, tzinfo=UTC)  # a date alone: midnight, UTC


def test_the_notes_dates_bound_what_they_support(tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]) -> None:
    """A relationship's and an entity's first/last seen are the earliest and latest of their notes' own dates."""
    ingest(tmp_path, neo4j_settings)
    assert fact(neo4j)["first"] == MTIME
    assert fact(neo4j)["last"] == datetime(2025, 1, 2, 7, 0, tzinfo=UTC)
    [entity] = neo4j.execute_query(
        "MATCH (e:Entity {key: 'nextcloud'}) RETURN e.first_seen AS f, e.last_seen AS l"
    ).records
    assert (entity["f"].to_native(), entity["l"].to_native()) == (MTIME, datetime(2025, 1, 2, 7, 0, tzinfo=UTC))


def test_show_prints_dates_as_the_notes_write_them(tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]) -> None:
    """`membrane show` prints first/last seen and each source's date as its note writes it, alike from both stores."""
    stores = ingest(tmp_path, neo4j_settings)
    journal, graph = cli(stores.journal_only, "show", "Nextcloud"), cli(stores.neo4j, "show", "Nextcloud")
    assert journal.exit_code == graph.exit_code == 0
    assert journal.stdout == graph.stdout
    lines = graph.stdout.splitlines()
    assert "  first seen  2021-02-03T04:05:06Z" in lines and "  last seen   2025-01-02T08:00:00+01:00" in lines
    start = lines.index("  mentioned in 5 capture(s):")
    mentioned = [line.split()[:2] for line in lines[start + 1 : start + 6]]
    assert mentioned == [
        ["2021-02-03T04:05:06Z", "plain.txt"],
        ["2022-06-01T12:00:00Z", "office.pdf"],
        ["2023-12-31T23:30:00Z", "reading.json"],
        ["2024-03-05", "dated.md"],
        ["2025-01-02T08:00:00+01:00", "mail.eml"],
    ]
    assert "(first 2021-02-03T04:05:06Z, last 2025-01-02T08:00:00+01:00, model replay:recorded)" in graph.stdout
    facts = cli(stores.neo4j, "facts", str(stores.inbox / "processed" / "dated.md"))
    assert "  dated       2024-03-05" in facts.stdout.splitlines()


def test_ingesting_the_same_notes_again_gives_the_same_graph(
    tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """The same files dropped again (new mtimes), ingested with Neo4j and synced again, change no node,
    relationship, property or element id: a capture keeps the date it was first given."""
    stores = ingest(tmp_path, neo4j_settings)
    before = snapshot(neo4j)
    shutil.rmtree(stores.inbox)
    stores.inbox.mkdir()
    for name, (data, _) in NOTES.items():
        (stores.inbox / name).write_bytes(data)  # mtime: now
    assert cli(stores.neo4j, "ingest").exit_code == 0
    assert cli(stores.neo4j, "sync").exit_code == 0
    assert snapshot(neo4j) == before


def test_a_date_before_1970_is_kept_to_the_second(tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]) -> None:
    """A note dated before the epoch, with a fraction of a second, is projected, and both stores agree on it."""
    notes = {
        "moon.json": (
            json.dumps({"text": "Alice deployed Nextcloud.", "captured_at": "1969-07-20T20:17:40.5Z"}).encode(),
            "1969-07-20T20:17:40.5Z",
        )
    }
    stores = ingest(tmp_path, neo4j_settings, notes)
    assert fact(neo4j)["first"] == datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC)
    journal, graph = cli(stores.journal_only, "show", "Alice"), cli(stores.neo4j, "show", "Alice")
    assert journal.stdout == graph.stdout and "  first seen  1969-07-20T20:17:40.5Z" in graph.stdout.splitlines()


def test_sync_dates_a_graph_written_before_captures_had_dates(
    tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """A graph whose captures have no date and whose facts are dated by ingestion is dated by `membrane sync`."""
    stores = ingest(tmp_path, neo4j_settings)
    dated = snapshot(neo4j)
    neo4j.execute_query("MATCH (c:Capture) REMOVE c.captured_at, c.captured_utc SET c.fingerprint = 'before dates'")
    neo4j.execute_query("MATCH ()-[r:DEPLOYED]->() SET r.first_seen = datetime(), r.last_seen = datetime()")
    neo4j.execute_query("MATCH (e:Entity) SET e.first_seen = datetime(), e.last_seen = datetime()")
    assert snapshot(neo4j) != dated
    assert cli(stores.neo4j, "sync").exit_code == 0
    assert snapshot(neo4j) == dated
