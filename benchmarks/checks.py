"""What every benchmark does before it reports a figure (no benchmark here).

A speed is only a result when the work it timed was done: each benchmark checks
its own output (the counts it expects, answers that parse) and marks a row
"failed" with the reason when the check fails, instead of printing a rate for
work that did not happen (a writer that wrote 0 of 18,000 relationships is not
fast). Timed runs start after an untimed warm-up run, so imports, the JVM's JIT,
plan caches and llama.cpp's first decode are not billed to whichever row runs
first. A script whose rows failed exits 1.

The logic is plain functions over counts and callables, tested without Neo4j or
a model in tests/test_bench_checks.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

FAILED = "failed"


def count_problems(expected: Mapping[str, int], actual: Mapping[str, int]) -> list[str]:
    """One 'name: got N, expected M' line per expected count that the actual counts do not match."""
    problems = []
    for name, want in expected.items():
        got = actual.get(name)
        if got != want:
            problems.append(f"{name}: got {'none' if got is None else got}, expected {want}")
    return problems


def minimum_problems(minimum: Mapping[str, float], actual: Mapping[str, float]) -> list[str]:
    """One line per count that is missing or below its minimum (for outputs with no exact expectation)."""
    problems = []
    for name, least in minimum.items():
        got = actual.get(name)
        if got is None or got < least:
            problems.append(f"{name}: got {'none' if got is None else got}, expected at least {least}")
    return problems


def reason(problems: Iterable[str]) -> str | None:
    """The problems joined into one reason, or None when there are none."""
    joined = "; ".join(p for p in problems if p)
    return joined or None


def mark(row: dict[str, Any], problems: Iterable[str]) -> dict[str, Any]:
    """Set row["status"] to "failed" with row["reason"] when there are problems, else to "ok"; returns the row."""
    why = reason(problems)
    if why is None:
        row.setdefault("status", "ok")
    else:
        row["status"] = FAILED
        row["reason"] = why if row.get("reason") in (None, why) else f"{row['reason']}; {why}"
    return row


def failed(row: Mapping[str, Any]) -> bool:
    """Whether a row was marked failed (or carries an error instead of figures)."""
    return row.get("status") == FAILED or "error" in row


def failed_cell(row: Mapping[str, Any], width: int = 120) -> str:
    """The table cell that stands in for a failed row's figures."""
    return f"failed: {str(row.get('reason') or row.get('error') or 'unknown')[:width]}"


def exit_code(rows: Iterable[Mapping[str, Any]]) -> int:
    """1 when any row failed, else 0."""
    return 1 if any(failed(row) for row in rows) else 0


@dataclass
class Timed:
    """Seconds of each timed run (warm-up excluded) and the problems each run's check found."""

    seconds: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warmup_problems: list[str] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.seconds)


def timed_runs(
    work: Callable[[], Any],
    repeat: int,
    *,
    warmup: int = 1,
    before: Callable[[], Any] | None = None,
    check: Callable[[], Iterable[str]] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Timed:
    """Run `before` (untimed), then `work` (timed), `warmup` + `repeat` times; only the last `repeat` are kept.

    `check` runs (untimed) after every run, warm-up included; its problems are
    collected with the run they belong to, so a writer that writes nothing is a
    failure however fast it was.
    """
    result = Timed()
    for run in range(warmup + repeat):
        if before is not None:
            before()
        started = clock()
        work()
        elapsed = clock() - started
        problems = list(check()) if check is not None else []
        if run < warmup:
            result.warmup_problems += [f"warm-up: {p}" for p in problems]
        else:
            result.seconds.append(elapsed)
            result.problems += [f"run {run - warmup + 1}: {p}" for p in problems]
    return result
