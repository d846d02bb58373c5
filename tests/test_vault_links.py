"""A vault note's wikilinks and tags: rendered for the model, resolved by note name
and front-matter alias, and merged with the model's extraction (the link wins),
through `membrane ingest` in vault mode into a real Neo4j."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from membrane.config import InboxSettings
from membrane.vault import VaultIndex, inline_tags, render_links
from tests.support.explore import cli
from tests.support.pipeline import settings_sections, toml_text, write_replay


@pytest.mark.parametrize(
    ("text", "rendered", "links"),
    [
        ("See [[Raspberry Pi]].", "See Raspberry Pi.", [("Raspberry Pi", "")]),
        ("See [[Raspberry Pi|my pi]].", "See my pi.", [("Raspberry Pi", "my pi")]),
        ("See [[Raspberry Pi#Setup]].", "See Raspberry Pi.", [("Raspberry Pi", "")]),
        ("See [[Raspberry Pi#Setup|the setup]].", "See the setup.", [("Raspberry Pi", "the setup")]),
        ("See [[hardware/Raspberry Pi.md]].", "See Raspberry Pi.", [("Raspberry Pi", "")]),
        ("Photo: ![[rack.png]] and ![[Nextcloud]].", "Photo:  and Nextcloud.", [("Nextcloud", "")]),
        ("Code `[[not a link]]` stays.", "Code `[[not a link]]` stays.", []),
        ("```\n[[Neither]]\n```\n[[Yes]]", "```\n[[Neither]]\n```\nYes", [("Yes", "")]),
    ],
)
def test_links_are_rendered_as_the_reader_sees_them(text: str, rendered: str, links: list[tuple[str, str]]) -> None:
    """A link becomes its shown text, else the note's name; embeds of other files vanish; code is left alone."""
    out, found = render_links(text)
    assert out == rendered
    assert [(link.target, link.shown) for link in found] == links


def test_inline_tags_are_words_after_a_hash() -> None:
    """#tag and #nested/tag count; a heading, a number, an anchor in a URL and code do not."""
    text = "# Heading\nWork on #homelab and #projects/nas, issue #42, see x.org/#frag and `#code`.\n"
    assert inline_tags(text) == ["homelab", "projects/nas"]


def test_links_resolve_by_name_then_by_alias(tmp_path: Path) -> None:
    """A link names its note by file name (any case), else by a note's front-matter alias, else itself."""
    (tmp_path / "hw").mkdir()
    (tmp_path / "hw" / "Raspberry Pi.md").write_text("---\naliases: [RPi, the pi]\n---\nA board.\n")
    (tmp_path / "Nextcloud.md").write_text("---\nalias: NC\n---\nFiles.\n")
    index = VaultIndex(InboxSettings(path=tmp_path, mode="vault"))
    assert index.resolve("raspberry pi") == ("Raspberry Pi", ["RPi", "the pi"])
    assert index.resolve("rpi") == ("Raspberry Pi", ["RPi", "the pi"])
    assert index.resolve("NC") == ("Nextcloud", ["NC"])
    assert index.resolve("Jellyfin") == ("Jellyfin", [])


VAULT = {
    "Raspberry Pi.md": "---\naliases: [RPi]\ntags: hardware\n---\nThe Raspberry Pi sits in the rack.\n",
    "Alice.md": "Alice runs [[RPi|the little board]] and [[Nextcloud#Setup]] for the #homelab.\n",
}
# What the model reads (links rendered) and what it answers: it calls the board by the text it saw.
RENDERED = {
    "Raspberry Pi.md": "The Raspberry Pi sits in the rack.\n",
    "Alice.md": "Alice runs the little board and Nextcloud for the #homelab.\n",
}
ANSWERS = {
    "Raspberry Pi.md": {"entities": [{"name": "Raspberry Pi", "role": "subject"}], "relationships": []},
    "Alice.md": {
        "entities": [{"name": "Alice", "role": "subject"}, {"name": "little board", "role": "object"}],
        "relationships": [{"source": "Alice", "relation": "RUNS", "target": "the little board"}],
    },
}


@pytest.mark.neo4j
def test_links_and_tags_reach_the_graph(tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]) -> None:
    """Links are mentions of the linked notes (an alias resolved to the note's name, the model's differing name
    renamed to it, its own form kept as an alias); tags go onto the capture; the files stay as they were."""
    vault = tmp_path / "inbox"
    vault.mkdir()
    for name, text in VAULT.items():
        (vault / name).write_text(text, encoding="utf-8")
    replay = write_replay(tmp_path / "replay.jsonl", [(RENDERED[n], json.dumps(ANSWERS[n])) for n in VAULT])
    config = tmp_path / "membrane.toml"
    config.write_text(toml_text(settings_sections(tmp_path, replay, neo4j=neo4j_settings, inbox={"mode": "vault"})))
    result = cli(config, "ingest")
    assert result.exit_code == 0, result.output
    assert {n: (vault / n).read_text(encoding="utf-8") for n in VAULT} == VAULT
    mentions = neo4j.execute_query(
        "MATCH (c:Capture {path: 'Alice.md'})-[m:MENTIONS]->(e:Entity) RETURN e.name AS name, m.aliases AS aliases "
        "ORDER BY name"
    ).records
    assert [(r["name"], sorted(r["aliases"])) for r in mentions] == [
        ("Alice", ["Alice"]),
        ("Nextcloud", ["Nextcloud"]),
        ("Raspberry Pi", ["Raspberry Pi", "little board", "the little board"]),
    ]
    [fact] = neo4j.execute_query("MATCH (s:Entity)-[r:RUNS]->(o:Entity) RETURN s.key AS s, o.key AS o").records
    assert (fact["s"], fact["o"]) == ("alice", "raspberry pi")
    tags = neo4j.execute_query("MATCH (c:Capture) RETURN c.path AS path, c.tags AS tags ORDER BY path").records
    assert [(r["path"], r["tags"]) for r in tags] == [("Alice.md", ["homelab"]), ("Raspberry Pi.md", ["hardware"])]
    [board] = neo4j.execute_query("MATCH (e:Entity {key: 'raspberry pi'}) RETURN e.name AS name").records
    assert board["name"] == "Raspberry Pi"
