"""`membrane search` latency on a synthetic graph, from Neo4j and from the journal alone.

E entities and C captures (defaults: 100,000 and 20,000). Entity names are one
to three made-up words (4,000 words, so names share words); each capture names
E/C entities no capture named before plus one of 1,000 hubs, states 4
relationships between them and has about 60 words of text around them. The same CaptureFacts
are written into Neo4j by the real writer
(GraphStore.upsert_many, after the migrations that create the full-text
indexes; the server from MEMBRANE_TEST_NEO4J_URI / _USER / _PASSWORD[_FILE],
as `scripts/neo4j-local env` prints them; its data is wiped) and into the
journal's search index by the call the indexer makes (SearchStore.apply).

Then Q queries of five kinds (an entity's exact name; the first four letters
of a name word; a word of a capture's text; two words of one capture; a word
no note holds) run through membrane.search.search with the store open (as the
MCP server keeps it), limit 10, each kind once untimed first. Every answer is
compared between the stores: a kind whose answers differ, or whose queries
found nothing where they must, is printed as failed (exit 1).

    eval "$(scripts/neo4j-local env)"
    .venv/bin/python benchmarks/search.py [--entities 100000] [--captures 20000] [--queries 200]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from checks import FAILED, exit_code, failed_cell, mark  # noqa: E402
from daemon_overhead import _wipe  # noqa: E402

from membrane.config import Settings  # noqa: E402
from membrane.graph.store import GraphStore  # noqa: E402
from membrane.journal import Journal  # noqa: E402
from membrane.journal.search import IndexedCapture, IndexedMention, SearchChange  # noqa: E402
from membrane.logs import configure_logging  # noqa: E402
from membrane.resolve import CaptureFacts, ResolvedEntity, ResolvedRelationship, entity_key  # noqa: E402
from membrane.search import GraphSource, JournalSource, SearchResult, search  # noqa: E402
from tests.support.neo4j_env import neo4j_required  # noqa: E402

TYPES = ("RUNS_ON", "DEPENDS_ON", "USES", "OWNS", "BACKS_UP", "MONITORS", "WORKS_AT", "LOCATED_IN")
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "sa", "do", "gu", "fi", "be", "xo", "ly"]
KINDS = ("exact name", "name prefix", "text word", "two text words", "no match")


# ---------------------------------------------------------------- data


def _words(rng: random.Random, count: int) -> list[str]:
    words: dict[str, None] = {}
    while len(words) < count:
        words.setdefault("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))), None)
    return list(words)


def synthetic(entities: int, captures: int, seed: int = 11) -> tuple[list[str], list[CaptureFacts]]:
    """Entity names and the captures naming them (every entity at least once when captures allow)."""
    rng = random.Random(seed)
    vocabulary = _words(rng, 4000)
    names: dict[str, str] = {}
    while len(names) < entities:
        name = " ".join(rng.choice(vocabulary).capitalize() for _ in range(rng.randint(1, 3)))
        names.setdefault(entity_key(name), name)
    keys = list(names)
    filler = _words(rng, 1500)
    order = iter(rng.sample(keys, len(keys)))
    fresh = max(1, -(-entities // captures))
    facts = []
    for i in range(captures):
        chosen = [next(order, None) or rng.choice(keys) for _ in range(fresh)]  # every name in some capture
        hub = rng.choice(keys[:1000])
        chosen = list(dict.fromkeys([*chosen, hub]))
        pairs = (rng.sample(range(len(chosen)), 2) for _ in range(4))
        rels = {(chosen[a], rng.choice(TYPES), chosen[b]) for a, b in pairs}
        words = [rng.choice(filler) for _ in range(50)]
        for key in chosen:
            words.insert(rng.randint(0, len(words)), names[key])
        text = " ".join(words).capitalize() + "."
        at = f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:00.{i % 1000000:06d}Z"
        facts.append(
            CaptureFacts(
                sha256=f"{i:064x}",
                path=f"note-{i:05d}.md",
                ingested_at=at,
                model="replay:recorded",
                prompt_version="extract-v1",
                entities=tuple(ResolvedEntity(k, names[k], "subject", (names[k],)) for k in sorted(chosen)),
                relationships=tuple(ResolvedRelationship(s, t, o) for s, t, o in sorted(rels)),
                title=f"Note {i}",
                captured_at=at,
                captured_utc=at,
                text=text,
            )
        )
    return list(names.values()), facts


def _indexed(facts: CaptureFacts) -> IndexedCapture:
    return IndexedCapture(
        sha256=facts.sha256,
        path=facts.path,
        title=facts.title,
        captured_at=facts.captured_at,
        ingested_at=facts.ingested_at,
        model=facts.model,
        text=facts.text or "",
        mentions=tuple(IndexedMention(e.key, e.name, e.aliases) for e in facts.entities),
        facts=tuple((r.source_key, r.type, r.target_key) for r in facts.relationships),
    )


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def queries(names: list[str], facts: list[CaptureFacts], count: int, seed: int = 5) -> dict[str, list[str]]:
    rng = random.Random(seed)
    named = sorted({e.name for f in facts for e in f.entities})  # entities no capture names are not in the graph
    texts = [f.text or "" for f in rng.sample(facts, count)]
    plain = [[w for w in t.lower().rstrip(".").split() if w.isalpha()] for t in texts]
    return {
        "exact name": rng.sample(named, count),
        "name prefix": [rng.choice(rng.choice(names).split())[:4] for _ in range(count)],
        "text word": [rng.choice(words) for words in plain],
        "two text words": [" ".join(rng.sample(words, 2)) for words in plain],
        "no match": [f"qqq{i}zzz" for i in range(count)],
    }


# ---------------------------------------------------------------- runs


def _timed(ask: Callable[[str], SearchResult], asked: list[str]) -> tuple[list[float], list[SearchResult]]:
    for query in asked[:5]:  # warm-up: plan cache, page cache
        ask(query)
    times, answers = [], []
    for query in asked:
        started = time.perf_counter()
        answers.append(ask(query))
        times.append((time.perf_counter() - started) * 1000)
    return times, answers


def _problems(kind: str, answers: dict[str, list[SearchResult]]) -> list[str]:
    journal, graph = answers["journal only"], answers["Neo4j"]
    problems = [
        f"{a.query!r}: the stores answer differently"
        for a, b in zip(journal, graph, strict=True)
        if dataclasses.asdict(a) != dataclasses.asdict(b)
    ][:3]
    found = [bool(a.entities or a.captures) for a in journal]
    if kind == "no match" and any(found):
        problems.append("a query no note holds found something")
    if kind != "no match" and not all(found):
        problems.append(f"{found.count(False)} queries found nothing")
    if kind == "exact name" and not all(a.entities and a.entities[0].match == "key" for a in journal):
        problems.append("an exact name did not come first")
    return problems


def _percentile(times: list[float], share: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--captures", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    configure_logging("warning", "console")
    neo4j = neo4j_required()
    names, facts = synthetic(args.entities, args.captures)
    asked = queries(names, facts, args.queries)
    with tempfile.TemporaryDirectory(prefix="membrane-search-") as tmp:
        settings = Settings.model_validate(
            {"journal": {"path": str(Path(tmp) / "journal.sqlite3")}, "neo4j": {**neo4j, "connect_timeout_s": 5}}
        )
        started = time.perf_counter()
        with Journal(settings.journal.path) as journal:
            store = journal.search
            for batch in _batches(facts, 500):
                store.apply([SearchChange(f.sha256, 0, _indexed(f)) for f in batch])
        journal_s = time.perf_counter() - started
        _wipe(neo4j)
        started = time.perf_counter()
        with GraphStore.connect(settings) as graph:
            graph.migrate()
            graph.upsert_many(facts)
            counts = graph.counts()
        graph_s = time.perf_counter() - started
        print(
            f"{len(names)} entity names, {len(facts)} captures; journal index built in {journal_s:.1f} s, "
            f"Neo4j written in {graph_s:.1f} s ({counts})"
        )
        rows, overall = [], {"journal only": [], "Neo4j": []}
        print("| queries | store | p50 ms | p95 ms | max ms | hits per query (mean) |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        with Journal(settings.journal.path) as journal, GraphStore.connect(settings) as graph:
            sources: dict[str, Any] = {"journal only": JournalSource(settings, journal), "Neo4j": GraphSource(graph)}
            for kind in KINDS:
                answers: dict[str, list[SearchResult]] = {}
                timings: dict[str, list[float]] = {}
                for label, source in sources.items():
                    timings[label], answers[label] = _timed(lambda q, s=source: search(s, q, limit=10), asked[kind])
                    overall[label] += timings[label]
                problems = _problems(kind, answers)
                for label, times in timings.items():
                    row = mark({"queries": kind, "store": label}, problems)
                    rows.append(row)
                    hits = statistics.mean(len(a.entities) + len(a.captures) for a in answers[label])
                    if row["status"] == FAILED:
                        print(f"| {kind} | {label} | {failed_cell(row)} | | | |")
                    else:
                        print(
                            f"| {kind} | {label} | {statistics.median(times):.1f} | {_percentile(times, 0.95):.1f} "
                            f"| {max(times):.1f} | {hits:.1f} |"
                        )
        for label, times in overall.items():
            print(
                f"| all {len(times)} | {label} | {statistics.median(times):.1f} | {_percentile(times, 0.95):.1f} "
                f"| {max(times):.1f} | |"
            )
    raise SystemExit(exit_code(rows))


if __name__ == "__main__":
    main()
