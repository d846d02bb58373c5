"""Crash-safety soak: many SIGKILL-and-restart trials of the daemon subprocess.

Each trial streams captures into a fresh inbox while `membrane run` works on
them, SIGKILLs the daemon at a random moment, restarts it, and checks that
every capture ended done exactly once (journal, processed/, one stored
extraction each) and that the Neo4j graph equals an uninterrupted run's.
The kill lands uniformly within the time an uninterrupted in-process run of
the same captures took (measured first, `--kill-window-s` to override), so
with long streams it falls anywhere from the first capture to the last; 15%
of the kills cut the start-up short instead.
The suite runs 20 such trials of 12 captures (tests/test_crash.py); this runs
as many as asked and prints the figures of every fault benchmark: captures in,
done, failed, lost, duplicated, trials whose graph differs from the clean
run's, wall time and the daemon's peak RSS.

    eval "$(scripts/neo4j-local env)"
    .venv/bin/python benchmarks/soak.py --trials 200 --captures 500 [--seed 1000]
"""

from __future__ import annotations

import argparse
import collections
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from faults_support import duplicated_facts, graph_diff, journal_duplicates, neo4j_from_env  # noqa: E402

from membrane.config import Settings  # noqa: E402
from membrane.daemon import ingest  # noqa: E402
from membrane.logs import configure_logging  # noqa: E402
from tests.support.pipeline import crash_trial, graph_snapshot, note, replay_for, settings_sections, wipe  # noqa: E402


def kill_state(result: dict[str, Any], captures: int) -> str:
    """Where the kill landed, from the journal read right after it."""
    counts = result["killed_at_counts"]
    if not counts:
        return "before the journal existed"
    if result["ready_before_kill"] == 0:
        return "during start-up"
    if counts.get("done", 0) == captures:
        return "after all were done"
    live = [s for s in ("extracting", "extracted", "projected") if counts.get(s)]
    return "mid-stream" + (f" ({', '.join(live)} in flight)" if live else "")


def outcome(
    workdir: Path, replay: Path, neo4j: dict[str, Any], driver: Any, captures: int, expected: dict[str, Any]
) -> dict[str, int]:
    """What one trial left, counted independently of crash_trial's own checks."""
    settings = Settings.model_validate(settings_sections(workdir, replay, neo4j=neo4j))
    names = {note(i)[0] for i in range(captures)}

    def listed(folder: Path) -> list[str]:
        return [p.name for p in folder.iterdir() if p.name in names] if folder.exists() else []

    processed, failed = listed(settings.inbox.processed), listed(settings.inbox.failed)
    journal = settings.journal.path
    return {
        "done": len(set(processed)),
        "failed": len(set(failed)),
        "lost": len(names - set(processed) - set(failed)),
        "duplicated": sum(duplicated_facts(driver).values()) + (journal_duplicates(journal) if journal.exists() else 0),
        "graph_differs": int(any(graph_diff(graph_snapshot(driver), expected).values())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--captures", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1000, help="seed of the first trial")
    parser.add_argument(
        "--kill-window-s",
        type=float,
        default=None,
        help="kill 0..this many seconds after READY (default: the clean run's duration)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="copy the folders of failed trials here")
    args = parser.parse_args()
    configure_logging("warning", "console")
    from neo4j import GraphDatabase

    neo4j = neo4j_from_env()
    failures: list[str] = []
    killed_states: collections.Counter[str] = collections.Counter()
    totals: collections.Counter[str] = collections.Counter()
    dropped_share: list[float] = []
    done_share: list[float] = []
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="membrane-soak-") as tmp,
        GraphDatabase.driver(neo4j["uri"], auth=(neo4j["user"], neo4j["password"])) as driver,
    ):
        root = Path(tmp)
        replay = replay_for(args.captures, root / "replay.jsonl")
        clean = root / "clean"
        settings = Settings.model_validate(settings_sections(clean, replay, neo4j=neo4j))
        settings.inbox.path.mkdir(parents=True)
        for i in range(args.captures):
            (settings.inbox.path / note(i)[0]).write_text(note(i)[1], encoding="utf-8")
        wipe(driver)
        clean_started = time.monotonic()
        assert ingest(settings, [settings.inbox.path]).ok
        clean_s = time.monotonic() - clean_started
        expected = graph_snapshot(driver)
        window = args.kill_window_s if args.kill_window_s is not None else max(0.6, clean_s)
        print(f"clean run: {args.captures} captures in {clean_s:.1f} s; kills 0-{window:.1f} s after READY", flush=True)
        for n in range(args.trials):
            seed = args.seed + n
            workdir = root / f"trial-{seed}"
            try:
                result: dict[str, Any] | None = crash_trial(
                    workdir,
                    replay,
                    neo4j,
                    driver,
                    seed=seed,
                    captures=args.captures,
                    expected=expected,
                    kill_window=(0.0, window),
                    drain_timeout_s=max(60.0, 4 * clean_s),
                )
            except AssertionError as exc:
                result = None
                failures.append(str(exc))
                print(f"trial {seed}: FAILED {exc}", flush=True)
            figures = outcome(workdir, replay, neo4j, driver, args.captures, expected)
            totals.update(figures)
            if result is not None:
                killed_states[kill_state(result, args.captures)] += 1
                if result["dropped_before_kill"] is not None:  # None: the daemon died before the kill
                    dropped_share.append(result["dropped_before_kill"] / args.captures)
                done_share.append(result["killed_at_counts"].get("done", 0) / args.captures)
            if result is None and args.keep is not None:
                shutil.copytree(workdir, args.keep / workdir.name, dirs_exist_ok=True)
            shutil.rmtree(workdir, ignore_errors=True)
            if (n + 1) % 10 == 0:
                print(
                    f"{n + 1} trials, {len(failures)} failed, lost {totals['lost']}, "
                    f"duplicated {totals['duplicated']}, {time.monotonic() - started:.0f} s",
                    flush=True,
                )

    def quartiles(values: list[float]) -> list[float]:
        if len(values) < 2:
            return [round(v, 2) for v in values]
        return [round(min(values), 2), *[round(q, 2) for q in statistics.quantiles(values, n=4)], round(max(values), 2)]

    summary = {
        "trials": args.trials,
        "captures_per_trial": args.captures,
        "failed_trials": len(failures),
        "captures_in": args.trials * args.captures,
        "done": totals["done"],
        "failed": totals["failed"],
        "lost": totals["lost"],
        "duplicated": totals["duplicated"],
        "trials_with_graph_diff": totals["graph_differs"],
        "seconds": round(time.monotonic() - started, 1),
        "clean_run_s": round(clean_s, 1),
        "kill_window_s": round(window, 1),
        "daemon_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
        "killed": dict(killed_states),
        "share_dropped_at_kill": quartiles(dropped_share),
        "share_done_at_kill": quartiles(done_share),
    }
    print(json.dumps(summary))
    raise SystemExit(1 if failures or totals["lost"] or totals["duplicated"] or totals["graph_differs"] else 0)


if __name__ == "__main__":
    main()
