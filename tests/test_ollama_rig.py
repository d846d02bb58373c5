"""scripts/ollama-local itself: the session's server, and a second rig it starts,
reuses and stops by its own pid, with the cached binary (no build here)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import OllamaServer

pytestmark = pytest.mark.ollama

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ollama-local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def second_rig(tmp_path: Path, ollama_server: OllamaServer) -> Iterator[dict[str, str]]:
    """The environment of a second rig on a free port (only SmolLM2 imported); stopped afterwards."""
    env = {
        **os.environ,
        "OLLAMA_RIG_DIR": str(tmp_path / "rig"),
        "OLLAMA_PORT": str(free_port()),
        "OLLAMA_LOCAL_MODELS": "smollm2-135m",
        "PYTHON": sys.executable,
    }
    built = script(env, "build")
    if built.returncode != 0 or "building" in built.stderr:
        pytest.fail(f"the cached Ollama binary was missing or failed: {built.stderr[-500:]}", pytrace=False)
    yield env
    script(env, "stop")


def test_session_server_is_the_pinned_version(ollama_server: OllamaServer) -> None:
    """The server the tests use is the Ollama version the script builds, and it answers on 127.0.0.1."""
    assert ollama_server.version == "0.17.4"
    assert ollama_server.host.startswith("http://127.0.0.1:")


def test_start_reuse_and_stop_by_pid(second_rig: dict[str, str]) -> None:
    """start serves and imports; a second start reuses the same process and model; stop ends that pid only."""
    first = script(second_rig, "start")
    assert first.returncode == 0, first.stderr
    assert "imported smollm2-135m" in first.stderr
    pid = int((Path(second_rig["OLLAMA_RIG_DIR"]) / "run" / "pid").read_text())
    host = f"http://127.0.0.1:{second_rig['OLLAMA_PORT']}"
    assert [m["model"] for m in httpx.get(f"{host}/api/tags", timeout=10).json()["models"]] == ["smollm2-135m:latest"]
    again = script(second_rig, "start")
    assert again.returncode == 0 and f"already running (pid {pid})" in again.stderr and "imported" not in again.stderr
    assert f"export MEMBRANE_TEST_OLLAMA_HOST={host}" in script(second_rig, "env").stdout
    assert script(second_rig, "status").stdout.startswith(f"running: pid {pid}, {host}, Ollama 0.17.4")
    stopped = script(second_rig, "stop")
    assert stopped.returncode == 0 and f"stopped (pid {pid})" in stopped.stderr
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert script(second_rig, "status").returncode == 3


def test_port_taken_by_another_process_is_refused(second_rig: dict[str, str]) -> None:
    """A port some other process listens on is an error naming OLLAMA_PORT, never adopted as the rig's server."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(second_rig["OLLAMA_PORT"])))
        squatter.listen()
        taken = script(second_rig, "start")
    assert taken.returncode == 1 and "is taken by another process; set OLLAMA_PORT" in taken.stderr
    assert not (Path(second_rig["OLLAMA_RIG_DIR"]) / "run" / "pid").exists()
