"""The benchmarks' self-checks (benchmarks/checks.py, graph_write.expected_graph), without Neo4j or a model.

A benchmark must report work that was not done as a failure, never as a speed,
and must not bill its warm-up to a timed run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from checks import (  # noqa: E402
    count_problems,
    exit_code,
    failed,
    failed_cell,
    mark,
    minimum_problems,
    timed_runs,
)
from graph_write import expected_graph, synthetic  # noqa: E402


def test_count_problems_names_each_count_that_differs() -> None:
    """A count that differs from the expected one is named with both numbers; matching counts say nothing."""
    expected = {"nodes": 12_000, "relationships": 18_000}
    assert count_problems(expected, {"nodes": 12_000, "relationships": 18_000}) == []
    assert count_problems(expected, {"nodes": 12_000, "relationships": 0}) == ["relationships: got 0, expected 18000"]
    assert count_problems(expected, {"nodes": 12_000}) == ["relationships: got none, expected 18000"]


def test_minimum_problems_flags_missing_and_low_counts_only() -> None:
    """A count below its minimum or absent is a problem; one at or above it is not."""
    assert minimum_problems({"tokens": 1}, {"tokens": 1}) == []
    assert minimum_problems({"tokens": 1}, {"tokens": 0}) == ["tokens: got 0, expected at least 1"]
    assert minimum_problems({"tokens": 1}, {}) == ["tokens: got none, expected at least 1"]


def test_mark_sets_failed_with_the_reason_and_ok_without_problems() -> None:
    """mark() turns problems into status "failed" with their joined reason, and no problems into "ok"."""
    assert mark({"writer": "raw-create"}, [])["status"] == "ok"
    row = mark({"writer": "neo4j-graphrag", "seconds": 0.84}, ["run 1: relationships: got 0, expected 18000"])
    assert row["status"] == "failed" and row["reason"] == "run 1: relationships: got 0, expected 18000"
    assert failed(row) and failed_cell(row).startswith("failed: run 1: relationships")


def test_a_failed_row_or_an_error_row_makes_the_exit_code_1() -> None:
    """exit_code() is 1 when any row failed or carries an error, else 0."""
    assert exit_code([{"status": "ok"}, {"status": "ok"}]) == 0
    assert exit_code([{"status": "ok"}, {"status": "failed", "reason": "x"}]) == 1
    assert exit_code([{"writer": "langchain", "error": "ModuleNotFoundError"}]) == 1


def test_timed_runs_keep_only_the_runs_after_the_warm_up() -> None:
    """With one warm-up and three timed runs, work runs four times and only the last three are timed."""
    ticks = iter(range(100))
    calls: list[str] = []
    runs = timed_runs(
        lambda: calls.append("work"), 3, before=lambda: calls.append("wipe"), clock=lambda: float(next(ticks))
    )
    assert calls == ["wipe", "work"] * 4
    assert runs.seconds == [1.0, 1.0, 1.0] and runs.best == 1.0 and runs.problems == []


def test_timed_runs_attribute_each_check_problem_to_its_run() -> None:
    """A check that fails after the second timed run is reported as that run's problem, warm-up apart."""
    outcomes = iter([[], [], ["relationships: got 0, expected 9"], []])
    runs = timed_runs(lambda: None, 3, check=lambda: next(outcomes))
    assert runs.warmup_problems == [] and runs.problems == ["run 2: relationships: got 0, expected 9"]


def test_expected_graph_counts_per_writer_on_data_with_shared_names() -> None:
    """Merging writers count distinct names and triples; graphrag and raw-create count every mention and fact."""
    data = [
        {"entities": ["A", "B", "C"], "relationships": [("A", "USES", "B"), ("B", "USES", "C")]},
        {"entities": ["A", "B", "D"], "relationships": [("A", "USES", "B"), ("D", "OWNS", "A")]},
    ]
    merged = {"nodes": 2 + 4, "relationships": 6 + 3}
    assert expected_graph("membrane", data) == merged == expected_graph("langchain", data)
    assert expected_graph("membrane-per-capture", data, writes=2) == merged
    assert expected_graph("neo4j-graphrag", data) == {"nodes": 2 + 6, "relationships": 6 + 4}
    assert expected_graph("raw-create", data, writes=2) == {"nodes": 2 * 8, "relationships": 2 * 10}
    with pytest.raises(ValueError):
        expected_graph("unknown", data)


def test_expected_graph_of_the_default_run_matches_the_published_counts() -> None:
    """At the default 2,000 captures each writer must leave docs/benchmarks.md's counts, less its migration node."""
    data = synthetic(2000, 5, 4)
    assert expected_graph("membrane", data) == {"nodes": 5690 - 1, "relationships": 18_000}
    assert expected_graph("langchain", data) == {"nodes": 5690 - 1, "relationships": 18_000}
    assert expected_graph("neo4j-graphrag", data) == {"nodes": 12_001 - 1, "relationships": 18_000}
    assert expected_graph("raw-create", data, writes=2) == {"nodes": 24_001 - 1, "relationships": 36_000}
    assert count_problems(expected_graph("neo4j-graphrag", data), {"nodes": 12_000, "relationships": 0}) == [
        "relationships: got 0, expected 18000"
    ]
