"""`membrane doctor`: one line per check, a concrete fix per failure, exit 1 on any."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import OllamaServer

from membrane.cli import main


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _doctor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> Any:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    base = {
        "MEMBRANE_INBOX__PATH": str(inbox),
        "MEMBRANE_JOURNAL__PATH": str(tmp_path / "journal.sqlite3"),
        "MEMBRANE_NEO4J__CONNECT_TIMEOUT_S": "2",
        "MEMBRANE_NEO4J__MAX_RETRY_TIME_S": "0",
        # A replay model needs no server: keeps these tests about Neo4j and the inbox.
        "MEMBRANE_MODEL__BACKEND": "replay",
        "MEMBRANE_MODEL__REPLAY_FILE": str(tmp_path / "replay.jsonl"),
    }
    (tmp_path / "replay.jsonl").write_text(
        '{"text": "x", "output": "{\\"entities\\": [], \\"relationships\\": []}"}\n', encoding="utf-8"
    )
    for key, value in {**base, **env}.items():
        monkeypatch.setenv(key, value)
    return CliRunner().invoke(main, ["doctor"])


def _line(output: str, name: str) -> str:
    lines = [line for line in output.splitlines() if line.split()[1:2] == [name]]
    assert len(lines) == 1, output
    return lines[0]


@pytest.mark.neo4j
def test_all_good(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, neo4j_settings: dict[str, str]) -> None:
    """With a reachable, authenticated Neo4j and a writable inbox every check is ok."""
    result = _doctor(
        monkeypatch,
        tmp_path,
        MEMBRANE_NEO4J__URI=neo4j_settings["uri"],
        MEMBRANE_NEO4J__PASSWORD=neo4j_settings["password"],
    )
    assert result.exit_code == 0, result.output
    line = _line(result.output, "neo4j")
    assert line.startswith("ok")
    assert "5.26" in line


@pytest.mark.neo4j
def test_wrong_password_is_a_clear_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, neo4j_settings: dict[str, str]
) -> None:
    """A wrong password gives one FAIL line that says so and how to fix it, and exit 1."""
    result = _doctor(
        monkeypatch, tmp_path, MEMBRANE_NEO4J__URI=neo4j_settings["uri"], MEMBRANE_NEO4J__PASSWORD="not-it"
    )
    assert result.exit_code == 1, result.output
    line = _line(result.output, "neo4j")
    assert line.startswith("FAIL")
    assert "wrong user or password" in line
    assert "fix: " in line and "password" in line.split("fix: ")[1]
    assert "not-it" not in result.output


def test_stopped_server_is_a_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A Neo4j that is not running gives one FAIL line naming the URI and how to start it."""
    uri = f"bolt://127.0.0.1:{_free_port()}"
    result = _doctor(monkeypatch, tmp_path, MEMBRANE_NEO4J__URI=uri, MEMBRANE_NEO4J__PASSWORD="x")
    assert result.exit_code == 1, result.output
    line = _line(result.output, "neo4j")
    assert line.startswith("FAIL")
    assert f"cannot reach {uri}" in line
    assert "fix: start Neo4j" in line


def test_journal_only_mode_skips_neo4j(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without neo4j.uri the Neo4j check is skipped, not failed."""
    result = _doctor(monkeypatch, tmp_path)
    assert _line(result.output, "neo4j").startswith("skip")
    assert result.exit_code == 0, result.output


def test_missing_inbox_fails_with_mkdir_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An inbox folder that does not exist is reported with the command that creates it."""
    missing = tmp_path / "nope"
    result = _doctor(monkeypatch, tmp_path, MEMBRANE_INBOX__PATH=str(missing))
    assert result.exit_code == 1
    line = _line(result.output, "inbox")
    assert line.startswith("FAIL") and f"mkdir -p {missing}" in line


@pytest.mark.model
def test_embedded_model_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model_path: Path) -> None:
    """The embedded backend with the packaged tiny model passes the model check."""
    result = _doctor(monkeypatch, tmp_path, MEMBRANE_MODEL__BACKEND="embedded", MEMBRANE_MODEL__NAME="smollm2-135m")
    assert _line(result.output, "model").startswith("ok"), result.output


def test_unknown_embedded_model_fails_with_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A model name the backend does not know is a FAIL with a fix."""
    result = _doctor(monkeypatch, tmp_path, MEMBRANE_MODEL__BACKEND="embedded", MEMBRANE_MODEL__NAME="no-such-model")
    assert result.exit_code == 1
    line = _line(result.output, "model")
    assert line.startswith("FAIL") and "fix: " in line


def test_ollama_down_fails_with_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An Ollama server that does not answer is a FAIL naming the host, with a fix."""
    host = f"http://127.0.0.1:{_free_port()}"
    result = _doctor(
        monkeypatch,
        tmp_path,
        MEMBRANE_MODEL__BACKEND="ollama",
        MEMBRANE_MODEL__NAME="qwen2.5:1.5b",
        MEMBRANE_MODEL__OLLAMA_HOST=host,
    )
    assert result.exit_code == 1
    line = _line(result.output, "model")
    assert line.startswith("FAIL") and "fix: " in line


@pytest.mark.ollama
def test_ollama_model_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ollama_server: OllamaServer) -> None:
    """A model the real Ollama server has passes the model check, naming the host and the model."""
    result = _doctor(
        monkeypatch,
        tmp_path,
        MEMBRANE_MODEL__BACKEND="ollama",
        MEMBRANE_MODEL__NAME=ollama_server.smollm2,
        MEMBRANE_MODEL__OLLAMA_HOST=ollama_server.host,
    )
    line = _line(result.output, "model")
    assert line.startswith("ok") and ollama_server.host in line and ollama_server.smollm2 in line, result.output
    assert result.exit_code == 0, result.output


@pytest.mark.ollama
def test_ollama_model_missing_fails_with_pull_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ollama_server: OllamaServer
) -> None:
    """A model the real Ollama server lacks is a FAIL whose fix is the ollama pull command."""
    result = _doctor(
        monkeypatch,
        tmp_path,
        MEMBRANE_MODEL__BACKEND="ollama",
        MEMBRANE_MODEL__NAME="no-such-model:1b",
        MEMBRANE_MODEL__OLLAMA_HOST=ollama_server.host,
    )
    assert result.exit_code == 1
    line = _line(result.output, "model")
    assert line.startswith("FAIL") and "fix: ollama pull no-such-model:1b" in line, result.output


def test_document_formats_are_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With the formats extra installed, the formats line lists the documents the inbox reads."""
    result = _doctor(monkeypatch, tmp_path)
    assert _line(result.output, "formats") == "ok    formats  documents readable: .docx, .eml, .html, .pdf", (
        result.output
    )
    result = _doctor(monkeypatch, tmp_path, MEMBRANE_INBOX__EXTENSIONS='[".txt", ".md"]')
    assert _line(result.output, "formats").startswith("skip"), result.output
