"""Faults of the disk: the journal's filesystem fills up while captures stream into the daemon.

The journal lives on a small tmpfs mounted for the run (root only: `mount -t
tmpfs`), filled with a filler file up to --headroom-kib of free space; the
inbox and the daemon's log stay on the normal disk. Captures are dropped one
by one (replay model, Neo4j from MEMBRANE_TEST_NEO4J_*; its data is wiped).
When the journal cannot write, the daemon stops; it is restarted after
--restart-s (as systemd's Restart= would) while the disk is still full, up to
the end of the stream; then the filler is deleted and the daemon finishes.
Prints the figures of benchmarks/faults_support.py, with how often and how the
daemon stopped.

    eval "$(scripts/neo4j-local env)"
    sudo .venv/bin/python benchmarks/faults_disk.py [--captures 300] [--tmpfs-mib 8] [--headroom-kib 384]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from faults_support import (
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


def _mount(folder: Path, mib: int) -> None:
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise SystemExit(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")


def _fill(folder: Path, headroom_kib: int) -> Path:
    """A filler file that leaves about headroom_kib free on folder's filesystem."""
    filler = folder / "filler"
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize - headroom_kib * 1024
    with filler.open("wb") as handle:
        while free > 0:
            chunk = min(free, 1 << 20)
            handle.write(b"\0" * chunk)
            free -= chunk
    return filler


def _free_kib(folder: Path) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", type=int, default=300)
    parser.add_argument("--tmpfs-mib", type=int, default=8)
    parser.add_argument("--headroom-kib", type=int, default=384, help="free space left for the journal")
    parser.add_argument("--interval-s", type=float, default=0.05, help="between two dropped captures")
    parser.add_argument("--restart-s", type=float, default=2.0, help="pause before a stopped daemon restarts")
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args()
    configure_logging("warning", "console")
    neo4j = neo4j_from_env()
    from neo4j import GraphDatabase

    with tempfile.TemporaryDirectory(prefix="membrane-faults-disk-") as tmp:
        root = Path(tmp)
        small = root / "journalfs"
        _mount(small, args.tmpfs_mib)
        try:
            replay = replay_for(args.captures, root / "replay.jsonl")
            workspace = Workspace.create(root / "run", replay, neo4j, journal={"path": str(small / "journal.sqlite3")})
            files = {note(i)[0]: note(i)[1] for i in range(args.captures)}
            with GraphDatabase.driver(neo4j["uri"], auth=(neo4j["user"], neo4j["password"])) as driver:
                expected = clean_snapshot(root / "clean", workspace.sections, files, driver)
                wipe(driver)
            for name, text in files.items():
                workspace.stage(name, text)
            filler = _fill(small, args.headroom_kib)
            daemon = Daemon(workspace)
            started, stopped_at = time.monotonic(), None
            daemon.start()
            for name in sorted(files):
                workspace.drop(name)
                daemon.sample_rss()
                if not daemon.alive():
                    daemon.reap()
                    stopped_at = stopped_at or round(time.monotonic() - started, 1)
                    time.sleep(args.restart_s)
                    daemon.start(wait_ready=False)
                time.sleep(args.interval_s)
            full_stops = len([c for c in daemon.exit_codes if c != 0])
            left_when_full = len(workspace.waiting())
            filler.unlink()  # the operator frees space
            until_inbox_empty(workspace, daemon, args.timeout_s)
            daemon.stop()
            wall = time.monotonic() - started
            log = workspace.root.joinpath("daemon.log").read_text(errors="replace")
            with GraphDatabase.driver(neo4j["uri"], auth=(neo4j["user"], neo4j["password"])) as driver:
                counts = outcome_counts(workspace, list(files))
                figures = report(
                    "faults_disk",
                    {"captures": args.captures, "tmpfs_mib": args.tmpfs_mib, "headroom_kib": args.headroom_kib},
                    workspace,
                    counts,
                    driver,
                    expected,
                    wall,
                    daemon,
                    first_stop_s=stopped_at,
                    stops_while_full=full_stops,
                    files_waiting_when_freed=left_when_full,
                    disk_full_log_lines=log.count("full"),
                    free_kib_after=_free_kib(small),
                )
        finally:
            subprocess.run(["umount", "-l", str(small)], check=False)
    raise SystemExit(0 if figures["ok"] else 1)


if __name__ == "__main__":
    main()
