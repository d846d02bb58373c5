"""GraphStore: the connection to Neo4j and everything run through it: the
migrations runner, the idempotent batched upsert, retraction, and the reads
(saved questions included). The only module that imports neo4j; driver
exceptions become MembraneError here and nowhere else. The Cypher it runs is
graph/cypher.py's, the parameters graph/rows.py's.

Graph model (see docs/design-notes.md, "## Graph"):

    (:Capture {sha256, path, ingested_at, captured_at, captured_utc, model, prompt_version,
               fingerprint, title, text, tags})  (title and text: graph.store_text)
    (:Entity {key, name, aliases, first_seen, last_seen})
    (:Capture)-[:MENTIONS {role, aliases}]->(:Entity)
    (:Entity)-[:<TYPE> {sources, first_seen, last_seen, model}]->(:Entity)

Timestamps are Neo4j DATETIMEs taken from CaptureFacts, never from the
clock: a capture's ingested_at and captured_utc (its own date; captured_at is
the same as the note writes it, a string), an entity's first_seen/last_seen
the min/max of captured_utc over the captures that mention it, a
relationship's over its `sources`, and its `model` is that of its newest
source by that date (ties: the greater model name); a batch
is merged by merge.merge_facts, as export merges the whole journal. A capture
whose stored fingerprint matches is skipped, and otherwise values are only
written when they change, so re-ingesting a capture leaves every node,
relationship and property as it was (element ids included). Every
relationship type is checked against RELATION_PATTERN before the transaction
writes anything.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

from neo4j import Driver, GraphDatabase, ManagedTransaction
from neo4j.exceptions import (
    AuthError,
    ConstraintError,
    DriverError,
    Neo4jError,
    ServiceUnavailable,
    SessionExpired,
    TransientError,
)
from neo4j.graph import Node, Relationship
from neo4j.graph import Path as GraphPath
from neo4j.time import DateTime

from membrane.clock import format_iso_utc
from membrane.config import Settings
from membrane.errors import ConfigError, GraphAuthFailed, GraphUnavailable, GraphWriteError
from membrane.graph import cypher
from membrane.graph.questions import saved_questions
from membrane.graph.rows import batches, fingerprint, mention_rows, write_rows
from membrane.logs import get_logger
from membrane.resolve import CaptureFacts

__all__ = ["MIGRATIONS_DIR", "GraphStore", "SearchRows"]

log = get_logger(__name__)

T = TypeVar("T")


def _migrations_dir() -> Path:
    """The checkout's migrations/ (editable installs, tests), else the copy a
    wheel installs under <prefix>/share/membrane/migrations."""
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "membrane" / "migrations"


MIGRATIONS_DIR = _migrations_dir()
_MIGRATION_FILE = re.compile(r"^\d{4}_[a-z0-9_]+\.cypher$")
# A MERGE racing another under a uniqueness constraint can still fail its check;
# running the transaction again finds the winner's node.
_CONSTRAINT_RETRIES = 3
_RACE_CODES = ("Neo.ClientError.Schema.ConstraintValidationFailed",)
_ALREADY_EXISTS = ("EquivalentSchemaRuleAlreadyExists", "ConstraintAlreadyExists", "IndexAlreadyExists")
_MIGRATE_HINT = "Run `membrane migrate` (the daemon does at start) to create the full-text indexes search needs."
_AUTH_HINT = "Neo4j refused the credentials: check neo4j.user and the password (neo4j.password_file)."


# ---------------------------------------------------------------- reads


class SearchRows(NamedTuple):
    """A search's rows: entity candidates (key, name, aliases); per picked key its key facts
    (source_name, type, target_name, sources) and newest capture (sha256, path, title,
    captured_at, ingested_at) or None; capture candidates (those fields, model and text)."""

    entities: list[dict[str, Any]]
    details: dict[str, tuple[list[dict[str, Any]], dict[str, Any] | None]]
    captures: list[dict[str, Any]]


def _details(tx: ManagedTransaction, keys: Sequence[str], facts: int) -> dict[str, Any]:
    rows = _ask_rows(tx, cypher.SEARCH_DETAILS, keys=list(keys), facts=facts) if keys else []
    return {r["key"]: (r["facts"], (r["newest"] or [None])[0]) for r in rows}


def _iso(moment: DateTime) -> str:
    """A stored DATETIME in resolve.normalize_timestamp's form, so the graph and
    the journal print the same string."""
    return format_iso_utc(moment.to_native())


def _plain(value: Any) -> Any:
    """Driver values as plain Python: nodes as property dicts, DATETIMEs as ISO strings."""
    if isinstance(value, DateTime):
        return _iso(value)
    if isinstance(value, Node):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Relationship):
        ends = {"start": _plain(value.start_node), "end": _plain(value.end_node)}
        return {"type": value.type, **ends, **{k: _plain(v) for k, v in value.items()}}
    if isinstance(value, GraphPath):
        return {"nodes": [_plain(n) for n in value.nodes], "relationships": [_plain(r) for r in value.relationships]}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _ask(tx: ManagedTransaction, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    question = saved_questions()[name]
    missing = sorted(set(question.params) - set(params))
    if missing:  # a programming error: the caller must pass what the Browser's :param lines set
        raise ValueError(f"saved question {name!r} needs the parameters {', '.join(missing)}")
    records = tx.run(question.query, params)
    # neo4j's Record.items() carries no annotations.
    return [{k: _plain(v) for k, v in record.items()} for record in records]  # type: ignore[no-untyped-call]


# ---------------------------------------------------------------- transaction work


def _run(tx: ManagedTransaction, query: str, **params: Any) -> list[dict[str, Any]]:
    return [record.data() for record in tx.run(query, params)]


def _ask_rows(tx: ManagedTransaction, query: str, **params: Any) -> list[dict[str, Any]]:
    """Rows with driver values made plain (DATETIMEs as the journal's ISO strings)."""
    # neo4j's Record.items() carries no annotations.
    return [{k: _plain(v) for k, v in record.items()} for record in tx.run(query, params)]  # type: ignore[no-untyped-call]


def _prune(tx: ManagedTransaction, sha: str, capture: CaptureFacts | None) -> list[str]:
    """Withdraw `sha`'s support from every fact `capture` no longer states (all of
    them when capture is None); returns the entity keys to refresh."""
    keep = [[r.source_key, r.type, r.target_key] for r in capture.relationships] if capture else []
    mentions = mention_rows(capture)
    _run(tx, cypher.LOCK_MENTIONED, sha=sha)
    _run(tx, cypher.DROP_SOLE_SUPPORT, sha=sha, keep=keep)
    _run(tx, cypher.DROP_SHARED_SUPPORT, sha=sha, keep=keep)
    return [row["key"] for row in _run(tx, cypher.DROP_MENTIONS, sha=sha, mentions=mentions)]


def _refresh(tx: ManagedTransaction, keys: list[str]) -> None:
    if keys:
        keys = sorted(set(keys))
        _run(tx, cypher.REFRESH_ENTITIES, keys=keys)
        _run(tx, cypher.DELETE_ORPHANS, keys=keys)


def _upsert_work(tx: ManagedTransaction, batch: Sequence[CaptureFacts]) -> None:
    for capture in batch:  # checked before anything is written
        for rel in capture.relationships:
            cypher.relationship_type_literal(rel.type)
    batch = list({c.sha256: c for c in batch}.values())  # a capture twice in a batch: the last one counts
    stored = {r["sha"]: r["fingerprint"] for r in _run(tx, cypher.LOCK_CAPTURES, shas=sorted(c.sha256 for c in batch))}
    prints = {c.sha256: fingerprint(c) for c in batch}
    # A capture stored with the same fingerprint is already in the graph as it is.
    batch = [c for c in batch if stored.get(c.sha256) != prints[c.sha256]]
    if not batch:
        return
    rows = write_rows(batch, prints)
    known = set(stored)
    stale: list[str] = []
    for capture in batch:
        if capture.sha256 in known:  # re-ingest or re-projection: drop what it no longer states
            stale += _prune(tx, capture.sha256, capture)
    fresh = [c for c in rows["captures"] if c["sha256"] not in known]
    again = [c for c in rows["captures"] if c["sha256"] in known]
    _run(tx, cypher.WRITE_BATCH, entities=rows["entities"], captures=fresh, relationships=rows["relationships"])
    if again:
        _run(tx, cypher.MERGE_CAPTURES, captures=again)
        for capture in batch:  # written before with other values: date what it supports from all sources
            if capture.sha256 in known:
                _run(tx, cypher.REDATE_SUPPORT, sha=capture.sha256)
                stale += [entity.key for entity in capture.entities]
    _refresh(tx, stale)


def _retract_work(tx: ManagedTransaction, sha: str) -> None:
    keys = _prune(tx, sha, None)
    _run(tx, cypher.DELETE_CAPTURE, sha=sha)
    _refresh(tx, keys)


def _migration_statements(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("//")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


# ---------------------------------------------------------------- the store


class GraphStore:
    """A connection to the graph; thread-safe (each call opens its own session)."""

    def __init__(self, driver: Driver, settings: Settings) -> None:
        self._driver = driver
        self._settings = settings
        self._database = settings.neo4j.database

    @classmethod
    def connect(cls, settings: Settings) -> GraphStore:
        """Open and verify a connection; ConfigError when Neo4j is not configured,
        GraphAuthFailed when it refuses the credentials, GraphUnavailable when it
        does not answer."""
        neo4j = settings.neo4j
        if not neo4j.enabled:
            raise ConfigError("neo4j.uri is empty: Neo4j is not configured", key="neo4j.uri")
        try:
            driver = GraphDatabase.driver(
                neo4j.uri,
                auth=(neo4j.user, settings.neo4j_password()),
                connection_timeout=neo4j.connect_timeout_s,
                max_transaction_retry_time=neo4j.max_retry_time_s,
            )
        except (ValueError, Neo4jError, DriverError) as exc:
            raise ConfigError(f"neo4j.uri = {neo4j.uri!r}: {exc}", key="neo4j.uri") from exc
        store = cls(driver, settings)
        try:
            store.ping()
        except BaseException:  # GraphUnavailable, or GraphWriteError for a missing database
            driver.close()
            raise
        return store

    def close(self) -> None:
        self._driver.close()

    def __enter__(self) -> GraphStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- health

    def ping(self) -> None:
        """Raise GraphUnavailable unless the server answers an authenticated query."""
        self._read(lambda tx: _run(tx, cypher.PING))

    def server_info(self) -> dict[str, str]:
        rows = self._read(lambda tx: _run(tx, cypher.SERVER_COMPONENTS))
        return {"version": rows[0]["versions"][0], "edition": rows[0]["edition"]}

    # -- schema

    def migrate(self, directory: Path | None = None) -> list[str]:
        """Apply pending migrations in name order; returns those this call recorded.

        Each statement must be idempotent (IF NOT EXISTS): two processes may run
        the same migration at once, and the unique name decides who records it.
        """
        directory = directory or MIGRATIONS_DIR
        files = sorted(p for p in directory.glob("*.cypher") if _MIGRATION_FILE.match(p.name))
        self._schema(cypher.MIGRATION_CONSTRAINT)
        done = {r["name"] for r in self._read(lambda tx: _run(tx, cypher.APPLIED_MIGRATIONS))}
        applied: list[str] = []
        for path in files:
            if path.name in done:
                continue
            text = path.read_text(encoding="utf-8")
            for statement in _migration_statements(text):
                self._schema(statement)
            if self._record_migration(path.name, text):
                applied.append(path.name)
                log.info("migration_applied", name=path.name)
        return applied

    def _schema(self, statement: str) -> None:
        try:
            self._write(lambda tx: tx.run(statement).consume(), capture=None)
        except GraphWriteError as exc:
            # A concurrent migrator created the same rule between our check and ours.
            if not any(code in str(exc) for code in _ALREADY_EXISTS):
                raise

    def _record_migration(self, name: str, text: str) -> bool:
        checksum = hashlib.sha256(text.encode("utf-8")).hexdigest()
        summary = self._write(
            lambda tx: tx.run(cypher.RECORD_MIGRATION, name=name, checksum=checksum).consume(), capture=None
        )
        return bool(summary.counters.nodes_created)

    # -- writes

    def upsert(self, facts: CaptureFacts) -> None:
        """Write one capture's facts in one transaction; idempotent."""
        started = time.perf_counter()
        self._write(lambda tx: _upsert_work(tx, [facts]), capture=facts.sha256)
        log.debug(
            "graph_upserted",
            sha256=facts.sha256,
            entities=len(facts.entities),
            relationships=len(facts.relationships),
            seconds=round(time.perf_counter() - started, 4),
        )

    def upsert_many(self, captures: Iterable[CaptureFacts], *, batch_rows: int | None = None) -> int:
        """Write many captures (sync, re-projection), graph.batch_size rows per
        transaction; the result equals upserting them one by one in ingested_at
        order. Returns the number of transactions."""
        transactions = 0
        for batch in batches(captures, batch_rows or self._settings.graph.batch_size):
            self._write(functools.partial(_upsert_work, batch=batch), capture=",".join(c.sha256 for c in batch[:3]))
            transactions += 1
        return transactions

    def replace(self, old_sha256: str, facts: CaptureFacts) -> None:
        """An edited capture: retract the old version and write the new one, in one transaction."""

        def work(tx: ManagedTransaction) -> None:
            if old_sha256 != facts.sha256:
                _retract_work(tx, old_sha256)
            _upsert_work(tx, [facts])

        self._write(work, capture=facts.sha256)
        log.debug("graph_replaced", old_sha256=old_sha256, sha256=facts.sha256)

    def retract(self, sha256: str) -> None:
        """Remove a capture and every fact only it supported; no-op if unknown."""
        self._write(lambda tx: _retract_work(tx, sha256), capture=sha256)
        log.debug("graph_retracted", sha256=sha256)

    # -- reads

    def capture_shas(self) -> set[str]:
        return {r["sha"] for r in self._read(lambda tx: _run(tx, cypher.CAPTURE_SHAS))}

    def capture_for_path(self, path: str) -> str | None:
        """The sha256 of the capture stored for `path` (the newest), if any."""
        rows = self._read(lambda tx: _run(tx, cypher.CAPTURE_FOR_PATH, path=path))
        return rows[0]["sha"] if rows else None

    def entity_keys(self) -> list[str]:
        rows = self._read(lambda tx: _run(tx, cypher.ENTITY_KEYS))
        return [r["key"] for r in rows]

    def ask(self, name: str, **params: Any) -> list[dict[str, Any]]:
        """Run the saved question `name` (membrane/queries/NAME.cypher) with
        `params`; rows as plain Python (nodes and relationships as property
        dicts, a relationship with its type and both end nodes)."""
        return self._read(lambda tx: _ask(tx, name, params))

    def shortest_paths(self, from_key: str, to_key: str) -> list[dict[str, Any]]:
        """Every shortest path of at most 8 relationships between two entities (at most 1,000), as
        {"path": {"nodes": [...], "relationships": [...]}} with plain property dicts."""
        return self._read(lambda tx: _ask_rows(tx, cypher.SHORTEST_PATHS, from_key=from_key, to_key=to_key))

    def entity_names(self) -> list[dict[str, Any]]:
        """key, name and aliases of every entity, by key (for resolving a name)."""
        return self._read(lambda tx: _run(tx, cypher.ENTITY_NAMES))

    # -- search (membrane/search.py ranks and checks what these return)

    def search(
        self,
        terms: Sequence[str],
        key: str,
        limit: int,
        *,
        captures: bool,
        facts: int,
        pick: Callable[[list[dict[str, Any]]], list[str]],
        fuzzy: bool = False,
    ) -> SearchRows:
        """One read transaction: up to `limit` entities whose name or an alias holds every term
        (as a word's start, or within two edits with `fuzzy`; exact key first, then shorter keys),
        and with `captures` up to `limit` captures whose title or text holds every term as a whole
        word (newest first, with their text); then, for the entity keys `pick` chooses from the first,
        their key facts and
        newest capture (see SearchRows)."""
        names = cypher.lucene_query(terms, match="fuzzy" if fuzzy else "prefix")
        words = cypher.lucene_query(terms, match="word")
        statement = cypher.SEARCH if captures else cypher.SEARCH_ENTITIES

        def work(tx: ManagedTransaction) -> SearchRows:
            params = {"names": names, "key": key, "limit": limit} | ({"words": words} if captures else {})
            found = _ask_rows(tx, statement, **params)[0]
            return SearchRows(found["entities"], _details(tx, pick(found["entities"]), facts), found["captures"])

        return self._read(work)

    def entity_details(
        self, keys: Sequence[str], facts: int
    ) -> dict[str, tuple[list[dict[str, Any]], dict[str, Any] | None]]:
        """SearchRows.details for these keys."""
        return self._read(lambda tx: _details(tx, keys, facts))

    def counts(self) -> dict[str, int]:
        """captures, entities, mentions and relationships (between entities)."""
        row = self._read(lambda tx: _run(tx, cypher.COUNTS))[0]
        return {k: int(row[k]) for k in ("captures", "entities", "mentions", "relationships")}

    # -- the one boundary for driver errors

    def _read(self, work: Callable[[ManagedTransaction], T]) -> T:
        try:
            with self._driver.session(database=self._database) as session:
                return session.execute_read(work)
        except Exception as exc:
            raise _translated(exc, None)

    def _write(self, work: Callable[[ManagedTransaction], T], *, capture: str | None) -> T:
        calls = 0

        def counted(tx: ManagedTransaction) -> T:
            # The driver calls the function again after a transient error (a deadlock, a leader switch).
            nonlocal calls
            calls += 1
            if calls > 1:
                log.info("graph_transaction_retried", sha256=capture, attempt=calls)
            return work(tx)

        for attempt in range(_CONSTRAINT_RETRIES + 1):
            calls = 0  # per execute_write: a uniqueness-race retry below is logged as that, not as the driver's
            try:
                with self._driver.session(database=self._database) as session:
                    return session.execute_write(counted)
            except ConstraintError as exc:
                if exc.code not in _RACE_CODES or attempt == _CONSTRAINT_RETRIES:
                    raise _translated(exc, capture)
                log.info("graph_write_race_retried", sha256=capture, attempt=attempt + 1)
                time.sleep(0.05 * 2**attempt)
            except Exception as exc:
                raise _translated(exc, capture)
        raise AssertionError("unreachable")  # pragma: no cover


def _translated(exc: Exception, capture: str | None) -> Exception:
    """The MembraneError for a driver exception (chained to it); others unchanged."""
    error = _translate(exc, capture)
    if error is not exc:
        error.__cause__ = exc
    return error


def _translate(exc: Exception, capture: str | None) -> Exception:
    if isinstance(exc, (GraphWriteError, GraphUnavailable, ConfigError)):
        return exc
    about = f"capture {capture}: " if capture else ""
    if isinstance(exc, AuthError):
        # Retryable: captures wait in the journal until the password is fixed;
        # `membrane doctor` reports it as its own line.
        return GraphAuthFailed(f"{about}Neo4j refused the credentials ({exc.code})", hint=_AUTH_HINT)
    if isinstance(exc, (ServiceUnavailable, SessionExpired, TransientError)):
        log.warning("graph_unavailable", sha256=capture, error=type(exc).__name__)
        return GraphUnavailable(f"{about}Neo4j is unavailable after retries: {exc}")
    if isinstance(exc, Neo4jError):
        hint = _MIGRATE_HINT if "no such fulltext schema index" in str(exc.message) else None
        return GraphWriteError(f"{about}Neo4j refused the query: {exc.code}: {exc.message}", hint=hint)
    if isinstance(exc, DriverError):
        return GraphUnavailable(f"{about}Neo4j driver error: {exc}")
    return exc
