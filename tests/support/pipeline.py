"""Helpers for the pipeline, daemon, crash and outage tests (no tests here).

Captures are deterministic notes whose model answers are recorded in a replay
file, so volume and crash tests run at disk speed on 2 cores; the graph and the
journal are real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

PEOPLE = ["Alice", "Bob", "Chiara", "Dmitri", "Eun-ji", "Farid", "Grete", "Hamid", "Ingrid", "Jun"]
PLACES = ["Acme Corp", "the Raspberry Pi", "Nextcloud", "Neo4j", "Debian", "the garage NAS", "Jellyfin"]
VERBS = ["WORKS_AT", "DEPLOYED_ON", "USES", "MAINTAINS"]


# The DESIGN example as an extraction: the reference answer for bench and schedule tests.
REFERENCE = {
    "entities": [
        {"name": "Docker", "role": "subject"},
        {"name": "Kubernetes cluster", "role": "object"},
        {"name": "DevOps team", "role": "subject"},
    ],
    "relationships": [
        {"source": "Docker", "relation": "DEPLOYED_ON", "target": "Kubernetes cluster"},
        {"source": "DevOps team", "relation": "MANAGES", "target": "Kubernetes cluster"},
    ],
}


def note(i: int) -> tuple[str, str, str]:
    """(file name, text, recorded model output) of the i-th sample capture."""
    person = f"{PEOPLE[i % len(PEOPLE)]} {i}"
    place = PLACES[(i * 3) % len(PLACES)]
    verb = VERBS[i % len(VERBS)]
    text = f"Note {i}: {person} {verb.lower().replace('_', ' ')} {place}.\n"
    output = {
        "entities": [{"name": person, "role": "subject"}, {"name": place, "role": "object"}],
        "relationships": [{"source": person, "relation": verb, "target": place}],
    }
    return f"note-{i:04d}.txt", text, json.dumps(output)


def write_replay(path: Path, records: Iterable[tuple[str, str]]) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for text, output in records:
            handle.write(json.dumps({"text": text, "output": output}) + "\n")
    return path


def replay_for(count: int, path: Path, extra: Iterable[tuple[str, str]] = ()) -> Path:
    return write_replay(path, [(note(i)[1], note(i)[2]) for i in range(count)] + list(extra))


def settings_sections(tmp: Path, replay: Path, neo4j: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """Sections for make_settings / a TOML file: replay model, fast daemon timings."""
    sections: dict[str, Any] = {
        "inbox": {"path": str(tmp / "inbox"), "stable_seconds": 0.1, "rescan_interval_s": 1.0},
        "journal": {"path": str(tmp / "journal.sqlite3")},
        "model": {"backend": "replay", "name": "recorded", "replay_file": str(replay)},
        "daemon": {"retry_base_s": 0.05, "retry_max_s": 0.5, "idle_poll_s": 0.05, "shutdown_timeout_s": 10.0},
        "bench": {"out_dir": str(tmp / "bench")},
    }
    if neo4j:
        sections["neo4j"] = {**neo4j, "connect_timeout_s": 1.0, "max_retry_time_s": 0.5}
    for name, values in overrides.items():
        sections[name] = {**sections.get(name, {}), **values}
    return sections


def toml_text(sections: dict[str, Any]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def wait_for(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def graph_snapshot(driver: Any) -> dict[str, Any]:
    """The graph's content without clock-dependent values (ingested_at, first/last_seen).

    Polled while the daemon writes, so each query drops the rows of nodes and
    relationships a concurrent retraction deleted under the read (read-committed
    hands those back with null properties)."""
    captures = driver.execute_query(
        "MATCH (c:Capture) WITH c.sha256 AS sha, c.path AS path, c.model AS model WHERE sha IS NOT NULL "
        "RETURN sha, path, model ORDER BY sha"
    ).records
    entities = driver.execute_query(
        "MATCH (e:Entity) WITH e.key AS key, e.name AS name, e.aliases AS aliases WHERE key IS NOT NULL "
        "RETURN key, name, aliases ORDER BY key"
    ).records
    mentions = driver.execute_query(
        "MATCH (c:Capture)-[m:MENTIONS]->(e:Entity) WITH c.sha256 AS sha, e.key AS key, m.role AS role "
        "WHERE sha IS NOT NULL AND key IS NOT NULL AND role IS NOT NULL RETURN sha, key, role ORDER BY sha, key"
    ).records
    facts = driver.execute_query(
        "MATCH (s:Entity)-[r]->(o:Entity) WITH s.key AS s, type(r) AS t, o.key AS o, r.sources AS sources "
        "WHERE s IS NOT NULL AND o IS NOT NULL AND sources IS NOT NULL RETURN s, t, o, sources ORDER BY s, t, o"
    ).records
    return {
        "captures": [tuple(r.values()) for r in captures],
        "entities": [(r["key"], r["name"], tuple(r["aliases"])) for r in entities],
        "mentions": [tuple(r.values()) for r in mentions],
        "facts": [(r["s"], r["t"], r["o"], tuple(r["sources"])) for r in facts],
    }


def membrane_env(config: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEMBRANE_")}
    env["MEMBRANE_CONFIG"] = str(config)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_daemon(config: Path, log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m membrane.cli run` as a subprocess, logging to `log`."""
    env = {**membrane_env(config), **(extra_env or {})}
    with log.open("ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "membrane.cli", "--log-level", "info", "run"],
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


# ---------------------------------------------------------------- crash trials


def journal_counts(path: Path) -> dict[str, int]:
    from membrane.journal import Journal

    with Journal(path) as journal:
        return journal.status.counts()


def crash_trial(
    workdir: Path,
    replay: Path,
    neo4j: dict[str, Any],
    driver: Any,
    *,
    seed: int,
    captures: int = 12,
    expected: dict[str, Any] | None = None,
    kill_window: tuple[float, float] = (0.0, 0.6),
    kill_during_startup: float = 0.15,
    drain_timeout_s: float = 60.0,
) -> dict[str, Any]:
    """One crash-safety trial: a stream of captures into a daemon subprocess that is
    SIGKILLed at a random moment and restarted; returns what was observed.

    The kill lands `kill_window` seconds after READY (or, with probability
    `kill_during_startup`, 0.1-1.2 s after the start); `drain_timeout_s` bounds
    the restarted daemon's catching up.

    Raises AssertionError when a capture is lost, duplicated or failed, or when
    the graph differs from `expected` (a clean run's graph_snapshot).
    """
    import random
    import signal

    rng = random.Random(seed)
    workdir.mkdir(parents=True)
    sections = settings_sections(workdir, replay, neo4j=neo4j)
    config = workdir / "membrane.toml"
    config.write_text(toml_text(sections), encoding="utf-8")
    inbox = Path(sections["inbox"]["path"])
    staging = workdir / "staging"
    inbox.mkdir()
    staging.mkdir()
    for i in range(captures):
        (staging / note(i)[0]).write_text(note(i)[1], encoding="utf-8")
    driver.execute_query("MATCH (n) WHERE NOT n:MembraneMigration DETACH DELETE n")
    early = captures // 3
    for i in range(early):
        os.rename(staging / note(i)[0], inbox / note(i)[0])
    log = workdir / "daemon.log"
    process = start_daemon(config, log)
    if rng.random() < kill_during_startup:
        kill_at = time.monotonic() + rng.uniform(0.1, 1.2)  # recovery of a start-up cut short
    else:
        wait_for(lambda: '"daemon_ready"' in log.read_text(errors="replace"), 60, f"trial {seed}: daemon ready")
        kill_at = time.monotonic() + rng.uniform(*kill_window)
    pending = list(range(early, captures))
    dropped_before_kill = None
    while pending or time.monotonic() < kill_at:
        if pending and rng.random() < 0.6:
            i = pending.pop(0)
            os.rename(staging / note(i)[0], inbox / note(i)[0])
        if time.monotonic() >= kill_at and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
            dropped_before_kill = captures - len(pending)
        time.sleep(rng.uniform(0.0, 0.05))
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()
        dropped_before_kill = captures
    killed_counts = (
        journal_counts(Path(sections["journal"]["path"])) if Path(sections["journal"]["path"]).exists() else {}
    )
    ready_before = log.read_text(errors="replace").count('"daemon_ready"')
    process = start_daemon(config, log)
    try:
        # SIGTERM before the handlers exist would kill it the default way; wait for READY.
        wait_for(
            lambda: log.read_text(errors="replace").count('"daemon_ready"') > ready_before,
            60,
            f"trial {seed}: restarted daemon ready",
            interval=0.05,
        )
        wait_for(
            lambda: (
                journal_counts(Path(sections["journal"]["path"]))["done"] >= captures
                and not list(inbox.glob("note-*.txt"))
            ),
            drain_timeout_s,
            f"trial {seed}: all captures done",
            interval=0.1,
        )
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
    counts = journal_counts(Path(sections["journal"]["path"]))
    processed = sorted(p.name for p in (inbox / "processed").iterdir())
    snapshot = graph_snapshot(driver)
    from membrane.journal import Journal

    with Journal(Path(sections["journal"]["path"])) as journal:
        extractions = len(list(journal.extractions.recorded_outputs()))
    problems = []
    if code != 0:
        problems.append(f"daemon exited {code} on SIGTERM")
    if counts["done"] != captures or counts["failed"] or counts["queued"] or counts["extracted"]:
        problems.append(f"journal counts {counts}")
    if extractions != captures:
        problems.append(f"{extractions} stored extractions for {captures} captures")
    if processed != [note(i)[0] for i in range(captures)]:
        problems.append(f"processed/ holds {processed}")
    if expected is not None and snapshot != expected:
        problems.append("graph differs from a clean run")
    if problems:
        raise AssertionError(f"trial {seed} (log {log}): " + "; ".join(problems))
    return {
        "seed": seed,
        "killed_at_counts": killed_counts,
        "counts": counts,
        "ready_before_kill": ready_before,
        "dropped_before_kill": dropped_before_kill,
    }


def wipe(driver: Any) -> None:
    """Delete the data, keep the schema and the migration records."""
    driver.execute_query("MATCH (n) WHERE NOT n:MembraneMigration DETACH DELETE n")
