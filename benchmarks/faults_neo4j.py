"""Faults of Neo4j: the server stopped and restarted 10 times while captures stream into the daemon.

The Neo4j must be a scripts/neo4j-local rig this script may stop and start:
NEO4J_RIG_DIR, NEO4J_BOLT_PORT and NEO4J_HTTP_PORT name it (as for
`scripts/neo4j-local`), MEMBRANE_TEST_NEO4J_* reach it (`scripts/neo4j-local
env`); its data is wiped. Captures are dropped one by one (replay model) while
a thread cycles the server: up for --up-s, stopped (every other time with
SIGKILL, a crash) for --down-s, started again. Extraction goes on while the
graph is down; facts wait in the journal and are projected after each
restart. Prints the figures of benchmarks/faults_support.py.

    eval "$(scripts/neo4j-local env)"
    NEO4J_RIG_DIR=... NEO4J_BOLT_PORT=... NEO4J_HTTP_PORT=... \\
      .venv/bin/python benchmarks/faults_neo4j.py [--captures 500] [--restarts 10] [--up-s 8] [--down-s 4]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from faults_support import (
    ROOT,
    Daemon,
    Workspace,
    clean_snapshot,
    neo4j_from_env,
    outcome_counts,
    report,
    until_inbox_empty,
)

from membrane.logs import configure_logging
from tests.support.pipeline import note, replay_for, wipe

RIG = ROOT / "scripts" / "neo4j-local"


def _rig(command: str) -> None:
    missing = [v for v in ("NEO4J_RIG_DIR", "NEO4J_BOLT_PORT", "NEO4J_HTTP_PORT") if not os.environ.get(v)]
    if missing:
        raise SystemExit(f"needs the rig to restart: set {', '.join(missing)} as for scripts/neo4j-local")
    subprocess.run([str(RIG), command], check=True, capture_output=True, timeout=300)


def _crash() -> None:
    """SIGKILL the rig's server (its pid file names the process this rig started)."""
    pid = int((Path(os.environ["NEO4J_RIG_DIR"]) / "run" / "pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.1)


class Outages(threading.Thread):
    """Stops (or kills) and restarts the server `restarts` times; records each outage's length."""

    def __init__(self, restarts: int, up_s: float, down_s: float) -> None:
        super().__init__(daemon=True)
        self.restarts, self.up_s, self.down_s = restarts, up_s, down_s
        self.outages_s: list[float] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for n in range(self.restarts):
                time.sleep(self.up_s)
                stopped = time.monotonic()
                if n % 2:
                    _crash()
                else:
                    _rig("stop")
                time.sleep(self.down_s)
                _rig("start")
                self.outages_s.append(round(time.monotonic() - stopped, 1))
        except BaseException as exc:  # noqa: BLE001 - reported by main
            self.error = exc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", type=int, default=500)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--up-s", type=float, default=8.0)
    parser.add_argument("--down-s", type=float, default=4.0)
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args()
    configure_logging("warning", "console")
    neo4j = neo4j_from_env()
    from neo4j import GraphDatabase

    with tempfile.TemporaryDirectory(prefix="membrane-faults-neo4j-") as tmp:
        root = Path(tmp)
        replay = replay_for(args.captures, root / "replay.jsonl")
        workspace = Workspace.create(root / "run", replay, neo4j)
        files = {note(i)[0]: note(i)[1] for i in range(args.captures)}
        with GraphDatabase.driver(neo4j["uri"], auth=(neo4j["user"], neo4j["password"])) as driver:
            expected = clean_snapshot(root / "clean", workspace.sections, files, driver)
            wipe(driver)
        for name, text in files.items():
            workspace.stage(name, text)
        outages = Outages(args.restarts, args.up_s, args.down_s)
        # Drip the captures over the whole run, outages included.
        interval = (args.restarts * (args.up_s + args.down_s + 15)) / max(1, args.captures)
        daemon = Daemon(workspace)
        started = time.monotonic()
        with daemon.running():
            outages.start()
            for name in sorted(files):
                workspace.drop(name)
                daemon.sample_rss()
                time.sleep(interval)
            outages.join()
            if outages.error is not None:
                raise SystemExit(f"the rig could not be cycled: {outages.error}")
            until_inbox_empty(workspace, daemon, args.timeout_s)
        wall = time.monotonic() - started
        with GraphDatabase.driver(neo4j["uri"], auth=(neo4j["user"], neo4j["password"])) as driver:
            counts = outcome_counts(workspace, list(files))
            figures = report(
                "faults_neo4j",
                {"captures": args.captures, "restarts": args.restarts, "up_s": args.up_s, "down_s": args.down_s},
                workspace,
                counts,
                driver,
                expected,
                wall,
                daemon,
                outages_s=outages.outages_s,
            )
    raise SystemExit(0 if figures["ok"] else 1)


if __name__ == "__main__":
    main()
