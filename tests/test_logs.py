"""Logging: JSON off a terminal, stable event names, and no secrets in any line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from membrane.cli import main
from membrane.logs import configure_logging, get_logger


def test_json_lines_with_event_name() -> None:
    """Off a terminal, each event is one JSON object with its stable event name."""
    stream = io.StringIO()
    configure_logging("info", "auto", stream=stream)
    get_logger("t").info("capture_done", sha256="abc", seconds=0.5)
    record = json.loads(stream.getvalue())
    assert record["event"] == "capture_done"
    assert record["sha256"] == "abc"
    assert record["level"] == "info"


def test_console_format_is_not_json() -> None:
    """format=console renders readable text, not JSON."""
    stream = io.StringIO()
    configure_logging("info", "console", stream=stream)
    get_logger("t").info("capture_done", sha256="abc")
    line = stream.getvalue()
    assert "capture_done" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_level_filters_events() -> None:
    """Events below the configured level are dropped."""
    stream = io.StringIO()
    configure_logging("warning", "json", stream=stream)
    get_logger("t").info("quiet_event")
    get_logger("t").warning("loud_event")
    assert "quiet_event" not in stream.getvalue()
    assert "loud_event" in stream.getvalue()


def test_secrets_are_masked_everywhere() -> None:
    """Credential keys, URI passwords and the known secret value never reach the output."""
    stream = io.StringIO()
    configure_logging("debug", "json", secrets=("hunter2-pw",), stream=stream)
    log = get_logger("t")
    log.info("neo4j_connect", uri="bolt://neo4j:hunter2-pw@host:7687", password="hunter2-pw")
    log.info("neo4j_error", error="auth failed for hunter2-pw", nested={"api_key": "k", "x": ["hunter2-pw"]})
    output = stream.getvalue()
    assert "hunter2-pw" not in output
    assert output.count("***") >= 4


def test_cli_never_logs_the_neo4j_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command run with debug logging and a configured password leaves no trace of it."""
    secret = "pw-that-must-not-leak-42"
    monkeypatch.setenv("MEMBRANE_NEO4J__URI", "bolt://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("MEMBRANE_NEO4J__PASSWORD", secret)
    monkeypatch.setenv("MEMBRANE_INBOX__PATH", str(tmp_path))
    monkeypatch.setenv("MEMBRANE_JOURNAL__PATH", str(tmp_path / "j.sqlite3"))
    monkeypatch.setenv("MEMBRANE_NEO4J__CONNECT_TIMEOUT_S", "1")
    monkeypatch.setenv("MEMBRANE_NEO4J__MAX_RETRY_TIME_S", "0")
    result = CliRunner().invoke(main, ["--log-level", "debug", "doctor"])
    assert "neo4j" in result.output
    assert secret not in result.output


def test_only_credential_keys_are_masked() -> None:
    """Keys that merely contain 'token' or 'auth' (tokens_per_second, author) keep their values."""
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)
    get_logger("t").info(
        "bench_model_done",
        tokens_per_second=42.5,
        prompt_tokens=100,
        author="me",
        neo4j_password="p",
        auth_token="t",
        apiKey="k",
        credentials="c",
    )
    record = json.loads(stream.getvalue())
    assert record["tokens_per_second"] == 42.5
    assert record["prompt_tokens"] == 100
    assert record["author"] == "me"
    assert {record[k] for k in ("neo4j_password", "auth_token", "apiKey", "credentials")} == {"***"}
