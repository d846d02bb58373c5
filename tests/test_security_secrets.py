"""The configured Neo4j password never leaves the config: not in logs, sidecars, exports, bench reports,
`status --json`, doctor's output or the journal.

Real processes (`python -m membrane.cli` at --log-level debug) against the real Neo4j, with the password written in
the config file (the worst place for it), a capture that succeeds, one that
is rejected and one whose extraction fails (both with sidecars); then the
same with a wrong password, whose refusal is logged. Every byte they print
and every file they write (the config file aside) is searched for the
password. The driver's own Bolt log (HELLO/LOGON included) is searched in
tests/test_security_injection.py.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.pipeline import (
    ROOT,
    membrane_env,
    note,
    replay_for,
    settings_sections,
    start_daemon,
    toml_text,
    wait_for,
)

pytestmark = [pytest.mark.neo4j, pytest.mark.slow]


def _cli(config: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run one membrane command; its stdout and stderr together."""
    done = subprocess.run(
        [sys.executable, "-m", "membrane.cli", "--log-level", "debug", *args],
        cwd=ROOT,
        env={**membrane_env(config), **(env or {})},
        capture_output=True,
        timeout=300,
    )
    return (done.stdout + done.stderr).decode("utf-8", "replace")


def _workspace(tmp_path: Path, neo4j: dict[str, Any]) -> Path:
    """A config with the password in it, an inbox with a good, a rejected and a failing capture, a gold file."""
    replay = replay_for(3, tmp_path / "replay.jsonl", extra=[("This answer is broken.", "not json at all")])
    sections = settings_sections(tmp_path, replay, neo4j=neo4j)
    config = tmp_path / "membrane.toml"
    config.write_text(toml_text(sections), encoding="utf-8")
    inbox = Path(sections["inbox"]["path"])
    inbox.mkdir()
    for i in range(2):
        (inbox / note(i)[0]).write_text(note(i)[1], encoding="utf-8")
    (inbox / "binary.txt").write_bytes(b"\xff\xfe\x00")
    (inbox / "broken.txt").write_text("This answer is broken.\n", encoding="utf-8")
    gold = tmp_path / "gold.jsonl"  # the replayed notes, not config/eval/gold.jsonl
    gold.write_text(
        "".join(json.dumps({"id": f"s{i}", "text": note(i)[1], **json.loads(note(i)[2])}) + "\n" for i in range(3)),
        encoding="utf-8",
    )
    return config


def _leaks(secret: str, outputs: dict[str, str], folder: Path) -> list[str]:
    found = [name for name, text in outputs.items() if secret in text]
    for path in folder.rglob("*"):
        if path.name == "membrane.toml":  # where it was configured
            continue
        if path.is_file() and secret.encode() in path.read_bytes():
            found.append(str(path.relative_to(folder)))
    return found


def test_the_password_appears_in_no_output_and_no_file(
    tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """Ingest, the daemon, status --json, export, bench and doctor, at debug level, never show the password."""
    password = neo4j_settings["password"]
    assert len(password) >= 8, "the search needs a distinctive password"
    config = _workspace(tmp_path, neo4j_settings)
    outputs = {"ingest": _cli(config, "ingest")}
    assert "capture_done" in outputs["ingest"] and "capture_file_failed" in outputs["ingest"]
    (tmp_path / "inbox" / note(2)[0]).write_text(note(2)[1], encoding="utf-8")
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(
            lambda: "capture_done" in log.read_text(errors="replace").split("daemon_ready", 1)[-1],
            60,
            "the daemon to finish a capture",
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=30)
    outputs["status"] = _cli(config, "status", "--json")
    assert '"done"' in outputs["status"]
    outputs["export_jsonl"] = _cli(config, "export", "--format", "jsonl", "--out", str(tmp_path / "graph.jsonl"))
    outputs["export_cypher"] = _cli(config, "export", "--format", "cypher", "--out", str(tmp_path / "graph.cypher"))
    outputs["bench"] = _cli(
        config,
        "bench",
        "--models",
        "replay:recorded",
        "--eval",
        str(tmp_path / "gold.jsonl"),
        "--out",
        str(tmp_path / "bench-out"),
        "--json",
    )
    outputs["doctor"] = _cli(config, "doctor")
    assert list((tmp_path / "bench-out").rglob("*.json")), outputs["bench"][-2000:]
    assert sorted(p.name for p in (tmp_path / "inbox" / "failed").glob("*.error.json")) == [
        "binary.txt.error.json",
        "broken.txt.error.json",
    ]
    assert (tmp_path / "graph.jsonl").stat().st_size > 0 and (tmp_path / "graph.cypher").stat().st_size > 0
    assert not _leaks(password, outputs, tmp_path), _leaks(password, outputs, tmp_path)


def test_a_refused_password_is_not_logged_either(tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]) -> None:
    """A wrong password (from the environment) is refused by Neo4j; the refusal is logged, the password is not."""
    wrong = "wrong-" + secrets.token_urlsafe(12)
    config = _workspace(tmp_path, neo4j_settings)
    env = {"MEMBRANE_NEO4J__PASSWORD": wrong}
    outputs = {
        "ingest": _cli(config, "ingest", env=env),
        "status": _cli(config, "status", "--json", env=env),
        "doctor": _cli(config, "doctor", env=env),
    }
    assert "unauthorized" in outputs["ingest"].lower() or "credentials" in outputs["ingest"].lower()
    assert not _leaks(wrong, outputs, tmp_path), _leaks(wrong, outputs, tmp_path)
