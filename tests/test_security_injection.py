"""Cypher injection through names, relation types, file names and front matter, into the real Neo4j.

250 generated payloads go through the real pipeline (`membrane ingest`'s code
path, replay model answers) into the real Neo4j. Every payload is stored
verbatim (entity names and aliases, capture paths, journal metadata) or, as a
relation type, stored in its sanitised form or rejected with a reason; the
graph keeps only MemBrane's labels and types. The query log is the driver's
own Bolt log (logger "neo4j.io", one "C: RUN" line per query sent, with its
text and parameters; Neo4j Community has no server-side query log): every
query text sent is a constant of membrane/graph/cypher.py or of a migration, so no
query text was built from a payload.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import tokenize
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from membrane.config import Settings
from membrane.daemon import ingest
from membrane.graph import cypher, store
from membrane.journal import Journal
from membrane.schema import RELATION_PATTERN, Extraction, normalize_relation
from tests.support.pipeline import settings_sections, write_replay

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]

FRAGMENTS = [
    "' OR 1=1 //",
    '" OR ""="',
    "`) DETACH DELETE n //",
    "'}) MATCH (n) DETACH DELETE n //",
    '"}]->(m) DELETE m //',
    "$name",
    "$sha",
    "{name: 'x'}",
    "/* comment */",
    "// line comment",
    "\\' escaped quote",
    "\\u0027 unicode quote",
    "CALL dbms.components()",
    "LOAD CSV FROM 'file:///etc/passwd' AS l RETURN l",
    "CALL apoc.cypher.runMany('MATCH (n) DETACH DELETE n', {})",
    "MERGE (x:Pwned) RETURN x",
    "]->(x:Pwned) //",
    ":Pwned",
    "`Pwned`",
    "n.name = 'x' SET n:Pwned",
    "; DROP CONSTRAINT entity_key",
    "UNION MATCH (n) RETURN n",
    "WITH 1 AS x CREATE (:Pwned)",
    "` backtick",
    "\u2019 OR \u20181\u2019=\u20181",
    "'\n MATCH (n) DETACH DELETE n\n//",
    "${jndi:ldap://x/a}",
    "{{7*7}}",
    "%s%s%n",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "KNOWS`]->(x) DETACH DELETE x //",
    "works_at`:Pwned",
    "USES\u0060 {a:1}",
    "a\\",
    "\\\\",
    "'''",
    '"""',
    "\t\r\nCREATE (:Pwned)",
    "é\u0301 non-NFC",
    "\u202e RTL override",
    "\ufeff BOM",
    "x" * 150,
    "🦀 crab",
    "名前 DELETE",
    "OR 1=1; CALL db.clearQueryCaches()",
    "RETURN 1 UNION ALL RETURN 2",
    "FOREACH (x IN [1] | CREATE (:Pwned))",
    "CALL { MATCH (n) DETACH DELETE n }",
    "') RETURN 1 //",
]
WRAPPERS = ["{}", "Alice {}", "{} Corp", "a'{}'b", "  {}  "]
PAYLOADS = list(dict.fromkeys(w.format(f) for f in FRAGMENTS for w in WRAPPERS))


def test_there_are_enough_payloads() -> None:
    """The injection check sends at least 200 distinct payloads."""
    assert len(PAYLOADS) >= 200


def _file_name(i: int, payload: str) -> str:
    safe = payload.replace("/", "\u2215")[:80]  # "/" cannot be in a file name; the rest can
    return f"n{i:03d} {safe}.md"


def _front_matter(payload: str) -> str:
    key = json.dumps(payload, ensure_ascii=False)  # a YAML double-quoted scalar (libyaml refuses \\ud83e pairs)
    return f"---\ntitle: {key}\n{key}: x\n---\n"


def _name_capture(i: int, payload: str) -> tuple[str, str, str]:
    """(file name, content, body) of the capture that carries `payload` as an entity name."""
    body = f"Note {i}: {payload} met target number {i}.\n"
    return _file_name(i, payload), _front_matter(payload) + body, body


def _answer(entities: list[str], relation: str) -> str:
    return json.dumps(
        {
            "entities": [{"name": entities[0], "role": "subject"}, {"name": entities[1], "role": "object"}],
            "relationships": [{"source": entities[0], "relation": relation, "target": entities[1]}],
        }
    )


class _BoltLog(logging.Handler):
    """The query texts of the driver's "C: RUN" log lines."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.queries: list[str] = []
        self.lines: list[str] = []
        self.everything: list[str] = []  # every line, HELLO and LOGON included

    def emit(self, record: logging.LogRecord) -> None:
        self.everything.append(record.getMessage())
        if "C: RUN" not in str(record.msg):
            return
        fields = record.args[-1] if isinstance(record.args, tuple) else ""
        token = next(tokenize.generate_tokens(io.StringIO(fields).readline))
        self.queries.append(ast.literal_eval(token.string))  # repr(query) comes first
        self.lines.append(fields)


@pytest.fixture
def bolt_log() -> Iterator[_BoltLog]:
    logger = logging.getLogger("neo4j.io")
    handler, level = _BoltLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _known_query_texts() -> str:
    # The module's source (inline literals) and its string constants (some are concatenated literals).
    texts = [Path(cypher.__file__).read_text(encoding="utf-8")]
    texts.extend(value.strip() for value in vars(cypher).values() if isinstance(value, str))
    for path in sorted(store.MIGRATIONS_DIR.glob("*.cypher")):
        texts.extend(store._migration_statements(path.read_text(encoding="utf-8")))
    return "\n".join(texts)


def _valid_type(relation: str) -> str | None:
    """The type the validator makes of `relation`, or None if it refuses it."""
    try:
        extraction = Extraction.parse(json.loads(_answer(["a", "b"], relation)))
    except ValidationError:
        return None
    return extraction.relationships[0].relation


def _entities(driver: Any) -> set[str]:
    rows = driver.execute_query("MATCH (e:Entity) RETURN e.name AS name, e.aliases AS aliases").records
    return {r["name"] for r in rows} | {a for r in rows for a in r["aliases"]}


def test_payloads_are_stored_verbatim_or_rejected_and_never_become_query_text(
    tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any], bolt_log: _BoltLog
) -> None:
    """250 payloads through the pipeline: stored verbatim (or a sanitised type) or rejected; queries all constants."""
    records, files = [], {}
    for i, payload in enumerate(PAYLOADS):
        name, content, body = _name_capture(i, payload)
        files[name] = content
        records.append((body, _answer([payload, f"target number {i}"], "MET")))
        relation_body = f"Relation {i}: source number {i} and target number {i}.\n"
        files[f"r{i:03d}.txt"] = relation_body
        records.append((relation_body, _answer([f"source number {i}", f"target number {i}"], payload)))
    replay = write_replay(tmp_path / "replay.jsonl", records)
    settings = Settings.model_validate(settings_sections(tmp_path, replay, neo4j=neo4j_settings))
    settings.inbox.path.mkdir()
    for name, content in files.items():
        (settings.inbox.path / name).write_text(content, encoding="utf-8")

    report = ingest(settings, [settings.inbox.path])
    sent_queries, sent = list(bolt_log.queries), "\n".join(bolt_log.lines)  # before the checks' own queries

    assert not report.unfinished
    by_path = {o.path: o for o in report.outcomes}
    stored = _entities(neo4j)
    paths = {r["path"] for r in neo4j.execute_query("MATCH (c:Capture) RETURN c.path AS path").records}
    types = {r["t"] for r in neo4j.execute_query("MATCH ()-[r]->() RETURN DISTINCT type(r) AS t").records}
    with Journal(settings.journal.path) as journal:
        metadata = {r.path: dict(r.metadata) for r in journal.captures.in_states()}
    for i, payload in enumerate(PAYLOADS):
        name = _file_name(i, payload)
        assert by_path[name].state == "done", f"{payload!r}: {by_path[name]}"
        assert payload.strip() in stored, f"entity {payload!r} not stored verbatim"
        assert name in paths, f"capture path {name!r} not stored verbatim"
        assert metadata[name] == {"title": payload, payload: "x"}, f"front matter {payload!r} changed"
        outcome = by_path[f"r{i:03d}.txt"]
        expected = _valid_type(payload)
        if expected is None:
            assert outcome.state == "failed" and "relation" in outcome.reason, f"{payload!r}: {outcome}"
        else:
            assert outcome.state == "done" and expected in types, f"{payload!r} -> {expected}: {outcome}"
            assert expected == normalize_relation(payload)
    labels = {r["label"] for r in neo4j.execute_query("CALL db.labels() YIELD label RETURN label").records}
    assert labels <= {"Capture", "Entity", "MembraneMigration"}, labels
    assert all(RELATION_PATTERN.fullmatch(t) for t in types), types

    known = _known_query_texts()
    assert sent_queries, "the driver's Bolt log recorded no query"
    built = {q for q in sent_queries if q.strip() not in known}
    assert not built, f"query texts that are not constants of graph/cypher.py: {sorted(built)[:3]}"
    assert len(set(sent_queries)) < 40  # a few constants, not one text per payload
    assert repr(PAYLOADS[3].strip())[1:-1] in sent, "payloads travel as parameters"
    bolt = "\n".join(bolt_log.everything)
    assert "C: LOGON" in bolt or "C: HELLO" in bolt
    assert neo4j_settings["password"] not in bolt, "the driver's log shows the password"


def test_the_bolt_log_catches_a_query_built_from_a_payload(neo4j: Any, bolt_log: _BoltLog) -> None:
    """The check above can fail: a query text with a payload interpolated shows up in the Bolt log as built."""
    payload = PAYLOADS[0]
    neo4j.execute_query("RETURN 1 AS ok")  # a constant of graph/cypher.py
    neo4j.execute_query("RETURN '" + payload.replace("'", "\\'") + "' AS p")
    known = _known_query_texts()
    built = [q for q in bolt_log.queries if q.strip() not in known]
    assert built == ["RETURN '" + payload.replace("'", "\\'") + "' AS p"]
