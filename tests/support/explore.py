"""Helpers for the show/facts and browser tests (no tests here).

The captures are examples/ plus notes with hostile names; their model answers
are recorded (hand-written extractions replayed by the replay backend), because
the tiny embedded model's answers for examples/ miss most facts (see
docs/benchmarks.md) and a picture or a comparison needs a graph worth reading.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from membrane.capture import read_capture
from membrane.cli import main
from membrane.config import InboxSettings
from tests.support.pipeline import ROOT, settings_sections, toml_text, write_replay

EXAMPLES = ROOT / "examples"


def _answer(entities: Iterable[tuple[str, str]], relationships: Iterable[tuple[str, str, str]]) -> dict[str, Any]:
    return {
        "entities": [{"name": name, "role": role} for name, role in entities],
        "relationships": [{"source": s, "relation": r, "target": t} for s, r, t in relationships],
    }


# Recorded answers for examples/, as a careful model would give them.
EXAMPLE_ANSWERS: dict[str, dict[str, Any]] = {
    "homelab.txt": _answer(
        [("Alice", "subject"), ("Nextcloud", "object"), ("Raspberry Pi", "object"), ("Debian 12", "object")],
        [
            ("Alice", "DEPLOYED", "Nextcloud"),
            ("Nextcloud", "RUNS_ON", "Raspberry Pi"),
            ("Debian 12", "RUNS_ON", "Raspberry Pi"),
        ],
    ),
    "meeting-notes.md": _answer(
        [("Bob", "subject"), ("Acme Corp", "object"), ("Neo4j", "object")],
        [("Bob", "WORKS_AT", "Acme Corp"), ("Acme Corp", "USES", "Neo4j")],
    ),
    "reading.json": _answer(
        [("Marie Curie", "subject"), ("polonium", "object"), ("Paris", "object")],
        [("Marie Curie", "DISCOVERED", "polonium")],
    ),
}

# Names a model may well return: quotes, backticks, Cypher look-alikes, right-to-left scripts.
HOSTILE = {
    "quote": 'O\'Brien "the `tick`"',
    "cypher": "x'}) DETACH DELETE n //",
    "backtick": "`Entity` {key: $key}",
    "hebrew": "שלום עולם",
    "arabic": "خادم المنزل",
    "override": "invoice\u202eexe.pdf",
}

EXTRA_NOTES: dict[str, tuple[str, dict[str, Any]]] = {
    "hostile.txt": (
        f"{HOSTILE['quote']} maintains {HOSTILE['cypher']}. {HOSTILE['backtick']} runs on {HOSTILE['hebrew']}, "
        f"which {HOSTILE['arabic']} hosts. {HOSTILE['override']} came by mail.\n",
        _answer(
            [
                (HOSTILE["quote"], "subject"),
                (HOSTILE["cypher"], "object"),
                (HOSTILE["backtick"], "subject"),
                (HOSTILE["hebrew"], "object"),
                (HOSTILE["arabic"], "subject"),
                (HOSTILE["override"], "object"),
            ],
            [
                (HOSTILE["quote"], "MAINTAINS", HOSTILE["cypher"]),
                (HOSTILE["backtick"], "RUNS_ON", HOSTILE["hebrew"]),
                (HOSTILE["arabic"], "HOSTS", HOSTILE["hebrew"]),
            ],
        ),
    ),
    "again.txt": (
        "Alice deployed Nextcloud again last week (Nextclould, says the invoice); NAS1 and NAS2 sit beside "
        "the Raspberry Pi.\n",
        _answer(
            [
                ("Alice", "subject"),
                ("Nextcloud", "object"),
                ("Nextclould", "object"),
                ("NAS1", "object"),
                ("NAS2", "object"),
                ("Raspberry Pi", "object"),
            ],
            [("Alice", "DEPLOYED", "Nextcloud"), ("NAS1", "NEAR", "Raspberry Pi")],
        ),
    ),
}


def example_files() -> list[Path]:
    return sorted(EXAMPLES / name for name in EXAMPLE_ANSWERS)


def fill_inbox(inbox: Path, *, extra: bool = True) -> Path:
    """examples/ (and the extra notes) copied into `inbox`; returns the replay file beside it."""
    inbox.mkdir(parents=True, exist_ok=True)
    records = []
    for path in example_files():
        shutil.copy(path, inbox / path.name)
        text = read_capture(inbox / path.name, InboxSettings(path=inbox)).text
        records.append((text, json.dumps(EXAMPLE_ANSWERS[path.name], ensure_ascii=False)))
    for name, (text, answer) in EXTRA_NOTES.items() if extra else ():
        (inbox / name).write_text(text, encoding="utf-8")
        records.append((text, json.dumps(answer, ensure_ascii=False)))
    return write_replay(inbox.parent / "replay.jsonl", records)


@dataclass(frozen=True)
class Stores:
    """Two configs over one journal: journal-only, and the same journal projected into Neo4j."""

    journal_only: Path
    neo4j: Path
    inbox: Path


def ingest_both(tmp: Path, neo4j: dict[str, Any], *, extra: bool = True, **overrides: Any) -> Stores:
    """Ingest the captures on the journal alone, then `membrane sync` them into Neo4j."""
    inbox = tmp / "inbox"
    replay = fill_inbox(inbox, extra=extra)
    journal_only = tmp / "journal-only.toml"
    journal_only.write_text(toml_text(settings_sections(tmp, replay, **overrides)), encoding="utf-8")
    graph = tmp / "neo4j.toml"
    graph.write_text(toml_text(settings_sections(tmp, replay, neo4j=neo4j, **overrides)), encoding="utf-8")
    ingested = cli(journal_only, "ingest")
    assert ingested.exit_code == 0, ingested.output
    synced = cli(graph, "sync")
    assert synced.exit_code == 0, synced.output
    return Stores(journal_only, graph, inbox)


def cli(config: Path, *args: str, env: dict[str, str] | None = None) -> Result:
    """`membrane --config CONFIG ARGS...` in process; stdout and stderr apart."""
    return CliRunner().invoke(main, ["--config", str(config), *args], env=env, catch_exceptions=False)
