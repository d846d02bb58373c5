"""Crash-safety soak: many SIGKILL-and-restart trials of the daemon subprocess.

Each trial streams captures into a fresh inbox while `membrane run` works on
them, SIGKILLs the daemon at a random moment, restarts it, and checks that
every capture ended done exactly once (journal, processed/, one stored
extraction each) and that the Neo4j graph equals an uninterrupted run's.
The suite runs 20 such trials (tests/test_crash.py); this runs as many as asked.

    eval "$(scripts/neo4j-local env)"
    .venv/bin/python benchmarks/soak.py --trials 200 [--captures 12] [--seed 1000]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_pipeline_support import crash_trial, graph_snapshot, note, replay_for, settings_sections, wipe  # noqa: E402

from membrane.config import Settings  # noqa: E402
from membrane.daemon import ingest  # noqa: E402
from membrane.logs import configure_logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--captures", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1000, help="seed of the first trial")
    args = parser.parse_args()
    configure_logging("warning", "console")
    from neo4j import GraphDatabase

    uri = os.environ.get("MEMBRANE_TEST_NEO4J_URI")
    if not uri:
        raise SystemExit('needs a Neo4j: eval "$(scripts/neo4j-local env)"')
    password = Path(os.environ["MEMBRANE_TEST_NEO4J_PASSWORD_FILE"]).read_text().strip() \
        if os.environ.get("MEMBRANE_TEST_NEO4J_PASSWORD_FILE") else os.environ.get("MEMBRANE_TEST_NEO4J_PASSWORD", "")
    neo4j = {"uri": uri, "user": os.environ.get("MEMBRANE_TEST_NEO4J_USER", "neo4j"), "password": password}
    failures: list[str] = []
    killed_states: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="membrane-soak-") as tmp, \
            GraphDatabase.driver(uri, auth=(neo4j["user"], password)) as driver:
        root = Path(tmp)
        replay = replay_for(args.captures, root / "replay.jsonl")
        clean = root / "clean"
        settings = Settings.model_validate(settings_sections(clean, replay, neo4j=neo4j))
        settings.inbox.path.mkdir(parents=True)
        for i in range(args.captures):
            (settings.inbox.path / note(i)[0]).write_text(note(i)[1], encoding="utf-8")
        wipe(driver)
        assert ingest(settings, [settings.inbox.path]).ok
        expected = graph_snapshot(driver)
        for n in range(args.trials):
            seed = args.seed + n
            try:
                result = crash_trial(root / f"trial-{seed}", replay, neo4j, driver, seed=seed,
                                     captures=args.captures, expected=expected)
            except AssertionError as exc:
                failures.append(str(exc))
                print(f"trial {seed}: FAILED {exc}", flush=True)
                continue
            counts = result["killed_at_counts"]
            if not counts:
                state = "before the journal existed"
            elif result["ready_before_kill"] == 0:
                state = "during start-up"
            elif counts.get("done", 0) == args.captures:
                state = "after all were done"
            else:
                live = [s for s in ("extracting", "extracted", "projected") if counts.get(s)]
                state = "mid-stream" + (f" ({', '.join(live)} in flight)" if live else "")
            killed_states[state] += 1
            if (n + 1) % 20 == 0:
                print(f"{n + 1} trials, {len(failures)} failed, {time.monotonic() - started:.0f} s", flush=True)
    summary = {
        "trials": args.trials,
        "captures_per_trial": args.captures,
        "failed": len(failures),
        "seconds": round(time.monotonic() - started, 1),
        "killed": dict(killed_states),
    }
    print(json.dumps(summary))
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
