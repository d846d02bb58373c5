"""Faults at volume: 1,000 files dropped into a running daemon at once, some of them the same
bytes under a second name, some rewritten in place while the daemon watches and reads them.

A `membrane run` subprocess (replay model, Neo4j from MEMBRANE_TEST_NEO4J_URI
as `scripts/neo4j-local env` prints it; its data is wiped) takes every file;
then the figures of benchmarks/faults_support.py: captures in, done, failed
with a reason, lost, duplicated facts, the graph's difference from a clean
`membrane ingest` of the final files, wall time, the daemon's peak RSS. A
rewritten file may be captured once (its final bytes) or twice (an edit: the
first version's facts are replaced); either way the graph must hold the final
version only. Half of them are rewritten after the daemon took the first
version (an edit at the same path: its facts must be retracted).

    eval "$(scripts/neo4j-local env)"
    .venv/bin/python benchmarks/faults_volume.py [--captures 1000] [--duplicates 20] [--rewritten 10]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
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
from tests.support.pipeline import note, wipe, write_replay


def _rewritten(k: int, version: str) -> tuple[str, str]:
    """(text, recorded answer) of version A or B of the k-th rewritten file."""
    person, place = f"Writer {k}{version}", f"Draft place {k}{version}"
    text = f"Rewritten {k}, version {version}: {person} drafted {place}.\n"
    answer = {
        "entities": [{"name": person, "role": "subject"}, {"name": place, "role": "object"}],
        "relationships": [{"source": person, "relation": "DRAFTED", "target": place}],
    }
    return text, json.dumps(answer)


def _write_slowly(path: Path, text: str, pieces: int = 6, pause_s: float = 0.02) -> None:
    """Write in place, in pieces: the daemon sees a file that is still growing."""
    data = text.encode("utf-8")
    step = max(1, len(data) // pieces)
    with path.open("wb") as handle:
        for start in range(0, len(data), step):
            handle.write(data[start : start + step])
            handle.flush()
            time.sleep(pause_s)


def _rewrite_all(workspace: Workspace, count: int) -> None:
    """Odd k: rewritten in place at once, while the daemon watches (and may be reading) it.
    Even k: rewritten at the same path after the daemon took the first version (an edit)."""
    paths = [workspace.inbox / f"rewritten-{k:03d}.txt" for k in range(count)]
    for k, path in enumerate(paths):
        _write_slowly(path, _rewritten(k, "A")[0])
        if k % 2:
            time.sleep(0.05 * (k % 4))
            _write_slowly(path, _rewritten(k, "B")[0])
    deadline = time.monotonic() + 900
    for k, path in enumerate(paths):
        if k % 2 == 0:
            while path.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            _write_slowly(path, _rewritten(k, "B")[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", type=int, default=1000)
    parser.add_argument("--duplicates", type=int, default=20, help="files whose bytes another file already has")
    parser.add_argument("--rewritten", type=int, default=10, help="files rewritten in place while watched")
    parser.add_argument("--timeout-s", type=float, default=1800)
    args = parser.parse_args()
    configure_logging("warning", "console")
    neo4j = neo4j_from_env()
    from neo4j import GraphDatabase

    with (
        tempfile.TemporaryDirectory(prefix="membrane-faults-volume-") as tmp,
        GraphDatabase.driver(neo4j["uri"], auth=(neo4j["user"], neo4j["password"])) as driver,
    ):
        root = Path(tmp)
        records = [(note(i)[1], note(i)[2]) for i in range(args.captures)]
        records += [_rewritten(k, v) for k in range(args.rewritten) for v in "AB"]
        replay = write_replay(root / "replay.jsonl", records)
        workspace = Workspace.create(root / "run", replay, neo4j, daemon={"concurrency": 2})
        final: dict[str, str] = {}
        for i in range(args.captures):
            name, text, _ = note(i)
            workspace.stage(name, text)
            final[name] = text
        for j in range(args.duplicates):
            name = f"copy-of-{note(j)[0]}"
            workspace.stage(name, note(j)[1])
            final[name] = note(j)[1]
        for k in range(args.rewritten):
            final[f"rewritten-{k:03d}.txt"] = _rewritten(k, "B")[0]
        expected = clean_snapshot(root / "clean", workspace.sections, final, driver)
        wipe(driver)
        daemon = Daemon(workspace)
        started = time.monotonic()
        with daemon.running():
            writer = threading.Thread(target=_rewrite_all, args=(workspace, args.rewritten))
            writer.start()
            for name in sorted(p.name for p in workspace.staging.iterdir()):
                workspace.drop(name)
            dropped_s = time.monotonic() - started
            writer.join()
            until_inbox_empty(workspace, daemon, args.timeout_s)
        wall = time.monotonic() - started
        counts = outcome_counts(workspace, list(final))
        # A rewritten file captured twice leaves two files in processed/: count captures by their final bytes.
        processed = {p.read_text(encoding="utf-8") for p in workspace.settings.inbox.processed.iterdir()}
        counts["lost"] = sum(1 for text in set(final.values()) if text not in processed) + counts["left_in_inbox"]
        counts["processed_files"] = counts["done"]  # first versions of edited files included
        counts["done"] = len(final) - counts["lost"] - counts["failed_with_reason"] - counts["failed_without_reason"]
        figures = report(
            "faults_volume",
            {"captures": args.captures, "duplicates": args.duplicates, "rewritten": args.rewritten},
            workspace,
            counts,
            driver,
            expected,
            wall,
            daemon,
            drop_s=round(dropped_s, 2),
            captures_per_s=round(len(final) / wall, 1),
        )
    raise SystemExit(0 if figures["ok"] else 1)


if __name__ == "__main__":
    main()
