"""Helpers for the benchmarks/faults_*.py scripts (no benchmark here).

Each fault script drops captures into a `membrane run` daemon subprocess,
injects its fault, waits until every file has left the inbox, and reports
the same figures through `report()`: captures in, done, failed with a reason,
lost (must be 0), duplicated facts (must be 0), the graph's difference from a
clean run of the same captures (must be none), wall time and the daemon's
peak RSS (VmHWM from /proc). The pieces come from tests/support/pipeline.py.py
(notes, replay files, settings, the daemon subprocess, graph snapshots) and
benchmarks/daemon_overhead.py (the Neo4j from the environment).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


from membrane.config import Settings  # noqa: E402
from membrane.daemon import ingest  # noqa: E402
from membrane.inbox import SIDECAR_SUFFIX  # noqa: E402
from membrane.journal import Journal  # noqa: E402
from tests.support.neo4j_env import neo4j_required as neo4j_from_env  # noqa: E402
from tests.support.pipeline import (  # noqa: E402
    graph_snapshot,
    settings_sections,
    start_daemon,
    toml_text,
    wait_for,
    wipe,
)

__all__ = [
    "Daemon",
    "Workspace",
    "clean_snapshot",
    "duplicated_facts",
    "graph_diff",
    "neo4j_from_env",
    "report",
    "wait_for",
]


@dataclass
class Workspace:
    """A run's folder: config (TOML) for the daemon, inbox, staging area for files not yet dropped."""

    root: Path
    sections: dict[str, Any]
    staging: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.staging = self.root / "staging"
        self.staging.mkdir(exist_ok=True)
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.config.write_text(toml_text(self.sections), encoding="utf-8")

    @classmethod
    def create(cls, root: Path, replay: Path | None, neo4j: dict[str, Any] | None, **overrides: Any) -> Workspace:
        return cls(root, settings_sections(root, replay or root / "unused.jsonl", neo4j=neo4j, **overrides))

    @property
    def config(self) -> Path:
        return self.root / "membrane.toml"

    @property
    def settings(self) -> Settings:
        return Settings.model_validate(self.sections)

    @property
    def inbox(self) -> Path:
        return Path(self.sections["inbox"]["path"])

    @property
    def journal(self) -> Path:
        return Path(self.sections["journal"]["path"])

    def stage(self, name: str, content: str | bytes) -> Path:
        path = self.staging / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    def drop(self, name: str) -> None:
        """Move a staged file into the inbox in one rename, as a finished file arrives."""
        os.rename(self.staging / name, self.inbox / name)

    def waiting(self) -> list[str]:
        return sorted(e.name for e in os.scandir(self.inbox) if e.is_file() and not e.name.startswith("."))


class Daemon:
    """`membrane run` as a subprocess, with its log, exit code and peak RSS."""

    def __init__(self, workspace: Workspace, extra_env: dict[str, str] | None = None) -> None:
        self.workspace = workspace
        self.log = workspace.root / "daemon.log"
        self.extra_env = extra_env
        self.process: subprocess.Popen[bytes] | None = None
        self.peak_rss_kib = 0
        self.starts = 0
        self.exit_codes: list[int] = []

    def start(self, *, wait_ready: bool = True) -> None:
        before = self._ready_count()
        self.process = start_daemon(self.workspace.config, self.log, self.extra_env)
        self.starts += 1
        if wait_ready:
            wait_for(lambda: self._ready_count() > before or self.process.poll() is not None, 120, "daemon ready")

    def _ready_count(self) -> int:
        return self.log.read_text(errors="replace").count('"daemon_ready"') if self.log.exists() else 0

    def sample_rss(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
        except OSError:
            pass

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def reap(self) -> None:
        """Record the exit code of a daemon that stopped by itself."""
        if self.process is not None and self.process.poll() is not None:
            self.exit_codes.append(self.process.returncode)
            self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.sample_rss()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.exit_codes.append(self.process.returncode)
        self.process = None

    @contextmanager
    def running(self) -> Iterator[Daemon]:
        self.start()
        try:
            yield self
        finally:
            self.stop()


def until_inbox_empty(workspace: Workspace, daemon: Daemon, timeout: float, *, restart: bool = True) -> None:
    """Wait until no capture file is left in the inbox and nothing is pending, sampling RSS;
    a daemon that exited on its own is restarted (as systemd would)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        daemon.sample_rss()
        if not daemon.alive() and restart:
            daemon.reap()
            daemon.start()
        if not workspace.waiting() and _pending(workspace.journal) == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s: {len(workspace.waiting())} files left in the inbox")


def _pending(journal_path: Path) -> int:
    if not journal_path.exists():
        return 1
    try:
        with Journal(journal_path) as journal:
            return journal.status.pending()
    except Exception:  # noqa: BLE001 - the daemon may hold a write lock; look again
        return 1


def _files(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return [
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.endswith(SIDECAR_SUFFIX) and not p.name.startswith(".")
    ]


def outcome_counts(workspace: Workspace, dropped: list[str]) -> dict[str, Any]:
    """Files in, done (processed/), failed with a reason (failed/ + a sidecar naming one), lost."""
    settings = workspace.settings
    processed = _files(settings.inbox.processed)
    failed = _files(settings.inbox.failed)
    reasoned = [p for p in failed if _sidecar_reason(p)]
    with Journal(workspace.journal) as journal:
        counts = journal.status.counts()
    return {
        "captures_in": len(dropped),
        "done": len(processed),
        "failed_with_reason": len(reasoned),
        "failed_without_reason": len(failed) - len(reasoned),
        "lost": len(dropped) - len(processed) - len(failed),
        "left_in_inbox": len(workspace.waiting()),
        "journal": {k: v for k, v in counts.items() if v},
    }


def _sidecar_reason(path: Path) -> str:
    sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
    try:
        return str(json.loads(sidecar.read_text(encoding="utf-8")).get("reason") or "")
    except (OSError, ValueError):
        return ""


def failure_reasons(workspace: Workspace) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for path in _files(workspace.settings.inbox.failed):
        reason = _sidecar_reason(path)[:90]
        reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def duplicated_facts(driver: Any) -> dict[str, int]:
    """Things the graph holds twice: relationships with the same ends and type, mentions, entity keys, captures."""
    queries = {
        "relationships": "MATCH (s:Entity)-[r]->(o:Entity) WITH s, type(r) AS t, o, count(r) AS n WHERE n > 1 "
        "RETURN count(*) AS dup",
        "mentions": "MATCH (c:Capture)-[m:MENTIONS]->(e:Entity) WITH c, e, count(m) AS n WHERE n > 1 "
        "RETURN count(*) AS dup",
        "entities": "MATCH (e:Entity) WITH e.key AS k, count(*) AS n WHERE n > 1 RETURN count(*) AS dup",
        "captures": "MATCH (c:Capture) WITH c.sha256 AS s, count(*) AS n WHERE n > 1 RETURN count(*) AS dup",
    }
    return {name: driver.execute_query(q).records[0]["dup"] for name, q in queries.items()}


def journal_duplicates(journal_path: Path) -> int:
    """Captures with more than one stored extraction (an extraction done twice)."""
    import sqlite3

    with sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT COUNT(*) FROM extractions GROUP BY sha256 HAVING COUNT(*) > 1").fetchall()
    return len(rows)


def clean_snapshot(root: Path, sections: dict[str, Any], files: dict[str, str | bytes], driver: Any) -> dict[str, Any]:
    """The graph an uninterrupted `membrane ingest` of `files` makes (the graph is wiped first and after)."""
    workspace = Workspace(root, json.loads(json.dumps(_rebased(sections, root))))
    for name, content in files.items():
        path = workspace.inbox / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    wipe(driver)
    ingest(workspace.settings, [workspace.inbox])
    snapshot = graph_snapshot(driver)
    wipe(driver)
    return snapshot


def _rebased(sections: dict[str, Any], root: Path) -> dict[str, Any]:
    moved = json.loads(json.dumps(sections, default=str))
    moved["inbox"]["path"] = str(root / "inbox")
    moved["journal"]["path"] = str(root / "journal.sqlite3")
    moved.setdefault("bench", {})["out_dir"] = str(root / "bench")
    return moved


def graph_diff(actual: dict[str, Any], expected: dict[str, Any]) -> dict[str, int]:
    """Per section of graph_snapshot, how many items are in one graph and not the other."""
    diff = {}
    for section in expected:
        a = {json.dumps(x, default=str) for x in actual.get(section, [])}
        e = {json.dumps(x, default=str) for x in expected[section]}
        diff[section] = len(a ^ e)
    return diff


def report(
    name: str,
    scale: dict[str, Any],
    workspace: Workspace,
    counts: dict[str, Any],
    driver: Any,
    expected: dict[str, Any],
    wall_s: float,
    daemon: Daemon,
    **extra: Any,
) -> dict[str, Any]:
    """Judge the run against the clean graph `expected`, print and return the figures; `ok` says
    whether the promises held. `counts` is outcome_counts' (a script may correct it first)."""
    duplicates = duplicated_facts(driver)
    diff = graph_diff(graph_snapshot(driver), expected)
    figures = {
        "benchmark": name,
        "scale": scale,
        **counts,
        "duplicated_facts": sum(duplicates.values()),
        "duplicates": duplicates,
        "graph_diff_from_clean": diff,
        "wall_s": round(wall_s, 1),
        "daemon_peak_rss_mib": round(daemon.peak_rss_kib / 1024, 1),
        "daemon_starts": daemon.starts,
        "daemon_exit_codes": daemon.exit_codes,
        "extractions_done_twice": journal_duplicates(workspace.journal),
        "failure_reasons": failure_reasons(workspace),
        **extra,
    }
    figures["ok"] = (
        counts["lost"] == 0
        and counts["failed_without_reason"] == 0
        and figures["duplicated_facts"] == 0
        and not any(diff.values())
    )
    print(json.dumps(figures, ensure_ascii=False), flush=True)
    return figures
