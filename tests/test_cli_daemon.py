"""The daemon's commands: ingest, status, export, sync (CliRunner) and run
(a subprocess under a fake systemd notify socket, stopped with SIGTERM)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from membrane.cli import main
from tests.support.pipeline import (
    graph_snapshot,
    note,
    replay_for,
    settings_sections,
    start_daemon,
    toml_text,
    wait_for,
)


def _config(tmp_path: Path, count: int = 3) -> tuple[Path, Path]:
    sections = settings_sections(tmp_path, replay_for(count, tmp_path / "r.jsonl"))
    config = tmp_path / "membrane.toml"
    config.write_text(toml_text(sections), encoding="utf-8")
    inbox = Path(sections["inbox"]["path"])
    inbox.mkdir(parents=True)
    return config, inbox


def test_ingest_exit_codes_and_lines(tmp_path: Path) -> None:
    """`ingest` prints one line per file and exits 0 when all are done, 1 when any failed."""
    config, inbox = _config(tmp_path)
    for i in range(2):
        (inbox / note(i)[0]).write_text(note(i)[1], encoding="utf-8")
    runner = CliRunner()
    ok = runner.invoke(main, ["--config", str(config), "ingest"])
    assert ok.exit_code == 0, ok.output
    assert "2 files: 2 done, 0 failed" in ok.stdout
    (inbox / "bad.txt").write_bytes(b"\xff\xfe\x00")
    failed = runner.invoke(main, ["--config", str(config), "ingest", str(inbox / "bad.txt")])
    assert failed.exit_code == 1
    assert failed.stdout.startswith("rejected  bad.txt")


def test_status_json_reports_counts_errors_model_and_lag(tmp_path: Path) -> None:
    """`status --json` holds counts per state, recent errors, the active model and the projection lag."""
    config, inbox = _config(tmp_path)
    (inbox / note(0)[0]).write_text(note(0)[1], encoding="utf-8")
    (inbox / "empty.txt").write_bytes(b"")
    runner = CliRunner()
    runner.invoke(main, ["--config", str(config), "ingest"])
    result = runner.invoke(main, ["--config", str(config), "status", "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["counts"]["done"] == 1
    assert status["active_model"] == "replay:recorded"
    assert status["projection_lag"]["count"] == 0
    assert status["recent_errors"][0]["path"] == "empty.txt"
    text = runner.invoke(main, ["--config", str(config), "status"])
    assert "done 1" in text.stdout and "empty.txt" in text.stdout


def test_export_writes_a_file_and_sync_needs_neo4j(tmp_path: Path) -> None:
    """`export --out` writes the journal's graph; `sync` without a Neo4j URI is a configuration error (2)."""
    config, inbox = _config(tmp_path)
    (inbox / note(0)[0]).write_text(note(0)[1], encoding="utf-8")
    runner = CliRunner()
    runner.invoke(main, ["--config", str(config), "ingest"])
    out = tmp_path / "graph.cypher"
    exported = runner.invoke(main, ["--config", str(config), "export", "--format", "cypher", "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    assert out.read_text(encoding="utf-8").startswith(":param captures => [{sha256: '")
    jsonl = runner.invoke(main, ["--config", str(config), "export"])
    assert [json.loads(line)["kind"] for line in jsonl.stdout.splitlines()][0] == "capture"
    synced = runner.invoke(main, ["--config", str(config), "sync"])
    assert synced.exit_code == 2 and "neo4j.uri" in synced.output


def test_run_notifies_systemd_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """`run` sends READY=1, STATUS= and WATCHDOG=1 on $NOTIFY_SOCKET, processes captures, and exits 0 on SIGTERM."""
    config, inbox = _config(tmp_path)
    address = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(address)
    listener.settimeout(30)
    messages: list[str] = []

    def receive_until(text: str) -> None:
        while not any(text in m for m in messages):
            messages.append(listener.recv(4096).decode("utf-8"))

    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"}
    process = start_daemon(config, tmp_path / "daemon.log", extra_env=env)
    try:
        receive_until("READY=1")
        (inbox / note(0)[0]).write_text(note(0)[1], encoding="utf-8")
        wait_for(lambda: (inbox / "processed" / note(0)[0]).exists(), 30, "the capture processed")
        receive_until("WATCHDOG=1")
        receive_until("done 1")  # a STATUS= line with the new counts
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        receive_until("STOPPING=1")
    finally:
        if process.poll() is None:
            process.kill()
        listener.close()
        os.unlink(address)
    assert any(m.startswith("READY=1\nSTATUS=") for m in messages)


@pytest.mark.neo4j
def test_forget_retracts_a_capture_by_path_or_sha256(
    tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """`forget` takes a processed/ path or a sha256, retracts the facts in journal and graph, and exits 1 when
    nothing matches."""
    sections = settings_sections(tmp_path, replay_for(2, tmp_path / "r.jsonl"), neo4j=neo4j_settings)
    config = tmp_path / "membrane.toml"
    config.write_text(toml_text(sections), encoding="utf-8")
    inbox = Path(sections["inbox"]["path"])
    inbox.mkdir(parents=True)
    for i in range(2):
        (inbox / note(i)[0]).write_text(note(i)[1], encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(main, ["--config", str(config), "ingest"]).exit_code == 0
    assert len(graph_snapshot(neo4j)["captures"]) == 2

    by_path = runner.invoke(main, ["--config", str(config), "forget", str(inbox / "processed" / note(0)[0])])
    assert by_path.exit_code == 0, by_path.output
    assert f"({note(0)[0]})" in by_path.stdout
    sha = hashlib.sha256(note(1)[1].encode("utf-8")).hexdigest()
    by_sha = runner.invoke(main, ["--config", str(config), "forget", sha])
    assert by_sha.exit_code == 0, by_sha.output

    assert graph_snapshot(neo4j)["captures"] == []
    status = json.loads(runner.invoke(main, ["--config", str(config), "status", "--json"]).stdout)
    assert status["counts"]["retracted"] == 2
    again = runner.invoke(main, ["--config", str(config), "forget", sha])
    assert again.exit_code == 1
    assert "no capture with facts matches" in again.output
