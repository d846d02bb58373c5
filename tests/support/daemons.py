"""Several daemons writing one Neo4j, for tests/test_several_daemons.py and
benchmarks/several_daemons.py (no tests here).

Notes whose facts overlap: a handful of people, systems and hosts recur, so
every entity and most relationships are stated by many captures, and their
`sources` lists are extended and shrunk by every daemon at once. A fleet is
`membrane run` subprocesses, each with its own inbox, journal and config,
all on one Neo4j and one replay file (the answers are recorded, so the graph
writes are what is exercised).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.pipeline import settings_sections, start_daemon, toml_text, wait_for, write_replay

PEOPLE = ["Alice", "Bob", "Chiara", "Dmitri", "Eun-ji"]
SYSTEMS = ["Nextcloud", "Jellyfin", "Grafana", "Home Assistant"]
HOSTS = ["the Raspberry Pi", "the garage NAS"]
VERBS = ["MAINTAINS", "USES", "CONFIGURED"]


def shared_note(i: int) -> tuple[str, str, str]:
    """(file name, text, recorded model output) of the i-th note: its own text, facts shared with many others."""
    person, system = PEOPLE[i % len(PEOPLE)], SYSTEMS[(i // len(PEOPLE)) % len(SYSTEMS)]
    host, verb = HOSTS[i % len(HOSTS)], VERBS[i % len(VERBS)]
    text = f"Log {i}: {person} {verb.lower()} {system}, which runs on {host}.\n"
    output = {
        "entities": [
            {"name": person, "role": "subject"},
            {"name": system, "role": "object"},
            {"name": host, "role": "object"},
        ],
        "relationships": [
            {"source": person, "relation": verb, "target": system},
            {"source": system, "relation": "RUNS_ON", "target": host},
        ],
    }
    return f"log-{i:05d}.txt", text, json.dumps(output)


def shared_replay(path: Path, count: int) -> Path:
    return write_replay(path, [(shared_note(i)[1], shared_note(i)[2]) for i in range(count)])


@dataclass(frozen=True)
class Plan:
    """Which notes each daemon gets, and which of them it deletes afterwards.

    A deleted note is held by that daemon alone: the same bytes in two inboxes
    are one capture in the graph, and a deletion seen by one daemon retracts it
    for all (docs/operations.md)."""

    notes: tuple[tuple[int, ...], ...]
    deleted: tuple[tuple[int, ...], ...]

    @classmethod
    def overlapping(cls, daemons: int, per_daemon: int, shared: int, deleted: int) -> Plan:
        """`per_daemon` notes of its own for each daemon, plus `shared` notes each daemon shares with the
        next; each deletes `deleted` of its own."""
        own = [tuple(range(d * per_daemon, (d + 1) * per_daemon)) for d in range(daemons)]
        common_start = daemons * per_daemon
        common = [tuple(range(common_start + d * shared, common_start + (d + 1) * shared)) for d in range(daemons)]
        notes = tuple(own[d] + common[d] + (common[d - 1] if daemons > 1 else ()) for d in range(daemons))
        return cls(notes, tuple(own[d][:deleted] for d in range(daemons)))

    def alone(self) -> Plan:
        """The same notes and deletions for one daemon."""
        notes = tuple(sorted({i for group in self.notes for i in group}))
        return Plan((notes,), (tuple(sorted({i for group in self.deleted for i in group})),))

    @property
    def count(self) -> int:
        return max(i for group in self.notes for i in group) + 1


@dataclass
class Fleet:
    """The daemons of one run: their configs, inboxes, logs and processes."""

    workdir: Path
    replay: Path
    neo4j: dict[str, Any]
    concurrency: int = 2
    sections: list[dict[str, Any]] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def journal(self, daemon: int) -> Path:
        return Path(self.sections[daemon]["journal"]["path"])

    def inbox(self, daemon: int) -> Path:
        return Path(self.sections[daemon]["inbox"]["path"])

    def log(self, daemon: int) -> Path:
        return self.workdir / f"daemon-{daemon}" / "daemon.log"

    def prepare(self, daemons: int) -> None:
        for daemon in range(daemons):
            root = self.workdir / f"daemon-{daemon}"
            sections = settings_sections(root, self.replay, neo4j=self.neo4j, daemon={"concurrency": self.concurrency})
            (root / "inbox").mkdir(parents=True)
            (root / "staging").mkdir()
            (root / "membrane.toml").write_text(toml_text(sections), encoding="utf-8")
            self.sections.append(sections)

    def start(self) -> None:
        for daemon in range(len(self.sections)):
            self.processes.append(start_daemon(self.workdir / f"daemon-{daemon}" / "membrane.toml", self.log(daemon)))
        for daemon in range(len(self.sections)):
            wait_for(
                lambda d=daemon: '"daemon_ready"' in self.log(d).read_text(errors="replace"),
                120,
                f"daemon {daemon} ready",
            )

    def stop(self) -> list[int]:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = []
        for process in self.processes:
            try:
                codes.append(process.wait(timeout=60))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait(timeout=30))
        return codes


def journal_state(path: Path) -> tuple[dict[str, int], int]:
    """The capture counts per state, and the graph retractions still pending."""
    from membrane.journal import Journal

    with Journal(path) as journal:
        return journal.status.counts(), len(journal.captures.retractions_due(limit=None))


def run_fleet(
    workdir: Path, plan: Plan, replay: Path, neo4j: dict[str, Any], *, concurrency: int = 2, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Run one daemon per group of `plan` on one Neo4j until every note is done and every deletion retracted.

    Each daemon's notes are staged, then all inboxes are filled at once, the
    notes each daemon deletes first; as soon as those are done they are
    deleted from processed/, while the rest are still being ingested. Returns
    timings and the daemons' exit codes; raises AssertionError when a daemon
    does not get there (its log is named)."""
    fleet = Fleet(workdir, replay, neo4j, concurrency)
    fleet.prepare(len(plan.notes))
    orders = []
    for daemon, notes in enumerate(plan.notes):
        deleted = set(plan.deleted[daemon])
        order = [i for i in notes if i in deleted] + [i for i in notes if i not in deleted]
        for i in order:
            name, text, _ = shared_note(i)
            (workdir / f"daemon-{daemon}" / "staging" / name).write_text(text, encoding="utf-8")
        orders.append(order)
    fleet.start()
    try:
        started = time.monotonic()
        for position in range(max(len(order) for order in orders)):  # interleaved: all inboxes fill at once
            for daemon, order in enumerate(orders):
                if position < len(order):
                    name = shared_note(order[position])[0]
                    os.rename(workdir / f"daemon-{daemon}" / "staging" / name, fleet.inbox(daemon) / name)
        for daemon, deleted in enumerate(plan.deleted):
            processed = fleet.inbox(daemon) / "processed"
            wait_for(
                lambda p=processed, d=deleted: all((p / shared_note(i)[0]).exists() for i in d),
                timeout_s,
                f"daemon {daemon}: the notes to delete processed (log {fleet.log(daemon)})",
            )
            for i in deleted:
                (processed / shared_note(i)[0]).unlink()
        for daemon, notes in enumerate(plan.notes):
            want = {"done": len(notes) - len(plan.deleted[daemon]), "retracted": len(plan.deleted[daemon])}

            def finished(d: int = daemon, w: dict[str, int] = want) -> bool:
                counts, pending = journal_state(fleet.journal(d))
                return pending == 0 and all(counts[state] == n for state, n in w.items())

            wait_for(finished, timeout_s, f"daemon {daemon}: {want} (log {fleet.log(daemon)})", interval=0.2)
        seconds = time.monotonic() - started
    finally:
        codes = fleet.stop()
    counts = [journal_state(fleet.journal(d))[0] for d in range(len(plan.notes))]
    return {
        "seconds": seconds,
        "exit_codes": codes,
        "counts": counts,
        "logs": [fleet.log(d) for d in range(len(plan.notes))],
    }


def duplicate_facts(driver: Any) -> list[tuple[str, str, str, int]]:
    """Relationships of one type between the same two entities that exist more than once."""
    records = driver.execute_query(
        "MATCH (s:Entity)-[r]->(o:Entity) WITH s.key AS s, type(r) AS t, o.key AS o, count(r) AS n WHERE n > 1 "
        "RETURN s, t, o, n ORDER BY s, t, o"
    ).records
    return [(r["s"], r["t"], r["o"], r["n"]) for r in records]


def duplicate_nodes(driver: Any) -> list[tuple[str, str, int]]:
    records = driver.execute_query(
        "CALL () { MATCH (e:Entity) WITH e.key AS key, count(*) AS n WHERE n > 1 RETURN 'Entity' AS label, key, n "
        "UNION ALL MATCH (c:Capture) WITH c.sha256 AS key, count(*) AS n WHERE n > 1 "
        "RETURN 'Capture' AS label, key, n } "
        "RETURN label, key, n"
    ).records
    return [(r["label"], r["key"], r["n"]) for r in records]


def notes_of(plan: Plan, *, deleted: bool = False) -> Sequence[int]:
    held = {i for group in plan.notes for i in group}
    gone = {i for group in plan.deleted for i in group}
    return sorted(gone if deleted else held - gone)
