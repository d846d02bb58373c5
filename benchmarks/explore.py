"""`membrane show` / `membrane facts` latency, from Neo4j and from the journal alone.

N captures (the deterministic notes of tests/support/pipeline.py: one person,
one place, one fact each; 7 places shared by all, so a place is a hub with
about N/7 supporting captures per fact) are ingested with the replay backend
into a journal, then synced into Neo4j (the server from MEMBRANE_TEST_NEO4J_URI
/ _USER / _PASSWORD[_FILE], as `scripts/neo4j-local env` prints them; its data
is wiped). Then each question is asked as the CLI asks it, store opened and
closed every time (the journal store rebuilds the graph from every capture,
the Neo4j store connects and runs two queries), without Python's start-up,
after one untimed warm-up call. Every answer is checked: both stores must give
the same number of facts, a leaf and a capture exactly one, the hub at least
one; a row whose answers differ is printed as failed (exit 1).

    eval "$(scripts/neo4j-local env)"
    .venv/bin/python benchmarks/explore.py [--captures 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from checks import FAILED, count_problems, exit_code, failed_cell, mark, minimum_problems  # noqa: E402
from daemon_overhead import _wipe  # noqa: E402

from membrane.config import Settings  # noqa: E402
from membrane.daemon import ingest  # noqa: E402
from membrane.explore import find_entity, open_reader  # noqa: E402
from membrane.journal import Journal  # noqa: E402
from membrane.logs import configure_logging  # noqa: E402
from membrane.pipeline import sync  # noqa: E402
from tests.support.neo4j_env import neo4j_required  # noqa: E402
from tests.support.pipeline import note, replay_for, settings_sections  # noqa: E402


def _build(root: Path, captures: int, neo4j: dict[str, Any]) -> tuple[Settings, Settings]:
    replay = replay_for(captures, root / "replay.jsonl")
    journal_only = Settings.model_validate(settings_sections(root, replay))
    journal_only.inbox.path.mkdir(parents=True)
    for i in range(captures):
        name, text, _ = note(i)
        (journal_only.inbox.path / name).write_text(text, encoding="utf-8")
    report = ingest(journal_only, [journal_only.inbox.path])
    assert report.ok, "ingest failed"
    graph = Settings.model_validate(settings_sections(root, replay, neo4j=neo4j))
    _wipe(neo4j)
    with Journal(graph.journal.path) as journal:
        sync(graph, journal)
    return journal_only, graph


def _show(settings: Settings, name: str) -> int:
    with open_reader(settings) as reader:
        return len(find_entity(reader, name, settings.graph.fuzzy_threshold).facts)


def _facts(settings: Settings, sha256: str) -> int:
    with Journal(settings.journal.path) as journal, open_reader(settings, journal) as reader:
        report = reader.capture(sha256)
    assert report is not None
    return len(report.facts)


def _timed(work: Callable[[], int], repeat: int) -> tuple[float, float, set[int]]:
    """Median and max ms of `repeat` calls after a warm-up call, and every answer (fact count) they gave."""
    answers = {work()}  # warm-up: imports, plan cache
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answers.add(work())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), answers


def answer_problems(answers: set[int], exact: int | None, least: int = 1) -> list[str]:
    """What is wrong with one question's answers: not the same every time, not `exact`, or below `least`."""
    if len(answers) != 1:
        return [f"the answers differ between calls: {sorted(answers)}"]
    (got,) = answers
    if exact is not None:
        return count_problems({"facts": exact}, {"facts": got})
    return minimum_problems({"facts": least}, {"facts": got})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captures", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    configure_logging("warning", "console")
    neo4j = neo4j_required()
    with tempfile.TemporaryDirectory(prefix="membrane-explore-") as tmp:
        started = time.perf_counter()
        journal_only, graph = _build(Path(tmp), args.captures, neo4j)
        print(f"{args.captures} captures ingested and synced in {time.perf_counter() - started:.1f} s")
        with Journal(journal_only.journal.path) as journal:
            sha = journal.captures.in_states(limit=1)[0].sha256
        questions = {  # the question, and the fact count its answer must have (None: at least one)
            "show hub (Nextcloud)": (lambda s: _show(s, "Nextcloud"), None),
            "show leaf (Alice 0)": (lambda s: _show(s, "Alice 0"), 1),
            "facts (one capture)": (lambda s: _facts(s, sha), 1),
        }
        print("| question | store | median ms | max ms | facts in the answer |")
        print("| --- | --- | --- | --- | --- |")
        rows = []
        for label, (ask, exact) in questions.items():
            answers: dict[str, set[int]] = {}
            for store, settings in (("journal only", journal_only), ("Neo4j", graph)):
                median, worst, answers[store] = _timed(lambda a=ask, s=settings: a(s), args.repeat)
                problems = answer_problems(answers[store], exact)
                if store == "Neo4j" and answers[store] != answers["journal only"]:
                    journal = sorted(answers["journal only"])
                    problems.append(f"Neo4j gave {sorted(answers[store])}, the journal {journal}")
                row = mark({"question": label, "store": store}, problems)
                rows.append(row)
                if row["status"] == FAILED:
                    print(f"| {label} | {store} | {failed_cell(row)} | | |")
                else:
                    print(f"| {label} | {store} | {median:.0f} | {worst:.0f} | {min(answers[store])} |")
    raise SystemExit(exit_code(rows))


if __name__ == "__main__":
    main()
