"""The reliability benchmarks run from a checkout and report their promises kept, at a tiny scale.

The full runs and their figures are in docs/reliability.md; these keep the
scripts from rotting (a script that cannot run measures nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.support.pipeline import ROOT

pytestmark = pytest.mark.slow


def _run(script: str, *args: str, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    import os

    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _neo4j_env(server: Any) -> dict[str, str]:
    """The test Neo4j as the scripts read it (faults_support.neo4j_from_env), with no password file."""
    return {
        "MEMBRANE_TEST_NEO4J_URI": server.uri,
        "MEMBRANE_TEST_NEO4J_USER": server.user,
        "MEMBRANE_TEST_NEO4J_PASSWORD": server.password,
        "MEMBRANE_TEST_NEO4J_PASSWORD_FILE": "",
    }


def test_fuzz_inputs_reports_every_target_and_no_broken_contract() -> None:
    """fuzz_inputs.py at 15 inputs per target prints seven targets and a total with nothing broken."""
    lines = _run("fuzz_inputs.py", "--examples", "15")
    assert [line["target"] for line in lines][-1] == "total" and len(lines) == 8
    assert "documents" in [line["target"] for line in lines]
    assert lines[-1]["inputs"] >= 7 * 10 and lines[-1]["broke_contract"] == 0


def test_convert_formats_scores_every_candidate() -> None:
    """convert_formats.py prints a scored, checked row per sample and candidate (the e-mail ones here)."""
    lines = _run("convert_formats.py", "--only", "eml", "--repeat", "1")
    assert sorted({line["library"] for line in lines}) == ["email (stdlib)", "membrane (child)"]
    assert len(lines) == 6 and all(line["status"] == "ok" and line["recall"] == 1.0 for line in lines)


@pytest.mark.neo4j
@pytest.mark.parametrize(
    "script,args",
    [
        ("faults_volume.py", ["--captures", "20", "--duplicates", "2", "--rewritten", "2"]),
        ("faults_model.py", ["--captures", "20"]),
    ],
)
def test_fault_scripts_report_nothing_lost_or_doubled(
    neo4j: object, neo4j_server: Any, script: str, args: list[str]
) -> None:
    """The fault benchmarks run end to end against the test Neo4j and report 0 lost, 0 duplicated, no diff."""
    figures = _run(script, *args, env=_neo4j_env(neo4j_server))[-1]
    assert figures["ok"] and figures["lost"] == 0 and figures["duplicated_facts"] == 0
    assert not any(figures["graph_diff_from_clean"].values()) and figures["daemon_peak_rss_mib"] > 0


@pytest.mark.neo4j
def test_soak_reports_every_capture_done_once_after_sigkills(neo4j: object, neo4j_server: Any) -> None:
    """soak.py at 2 trials of 12 captures: every capture done, none lost or doubled, the graph as clean."""
    summary = _run("soak.py", "--trials", "2", "--captures", "12", env=_neo4j_env(neo4j_server))[-1]
    assert summary["failed_trials"] == 0 and summary["captures_in"] == 24 and summary["done"] == 24
    assert summary["lost"] == 0 and summary["duplicated"] == 0 and summary["trials_with_graph_diff"] == 0
    assert sum(summary["killed"].values()) == 2 and summary["daemon_peak_rss_mib"] > 0
