"""Real OpenAI-compatible servers for tests and benchmarks (no tests here).

`LlamaCppServer` runs llama-cpp-python's own server (`python -m llama_cpp.server`,
its `server` extra's packages: fastapi, uvicorn, sse-starlette, starlette-context,
pydantic-settings) on 127.0.0.1 with a tiny GGUF, optionally behind an API key.
`LlamaServer` runs llama.cpp's llama-server (`scripts/llama-server build`;
`llama_server_binary` finds it) with N parallel slots, and `BusyWatch` polls its
slots to see how many requests it processes at once. Ollama's /v1 is the Ollama
rig's (scripts/ollama-local).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_packages_missing() -> str:
    """'' when llama_cpp.server can start here, else what is missing."""
    try:
        import fastapi  # noqa: F401
        import llama_cpp  # noqa: F401
        import pydantic_settings  # noqa: F401
        import sse_starlette  # noqa: F401
        import starlette_context  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed (pip install -e '.[dev]')"
    return ""


@dataclass
class LlamaCppServer:
    """llama-cpp-python's OpenAI-compatible server serving one GGUF as `alias`."""

    model_path: Path
    alias: str
    log: Path
    chat_format: str = "chatml"
    api_key: str = ""
    n_ctx: int = 4096
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 180.0) -> LlamaCppServer:
        command = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(self.model_path),
            "--model_alias",
            self.alias,
            "--chat_format",
            self.chat_format,
            "--n_ctx",
            str(self.n_ctx),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--verbose",
            "false",
        ]
        if self.api_key:
            command += ["--api_key", self.api_key]
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited {self.process.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"llama_cpp.server did not answer within {timeout_s:g} s: {self.log_tail()}")
            time.sleep(0.25)
        return self

    def answers(self) -> bool:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            return httpx.get(f"{self.base_url}/models", headers=headers, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL with kill=True: it goes away mid-request)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LlamaServer:
    """llama.cpp's llama-server serving one GGUF as `alias` with `slots` parallel slots of `slot_ctx` tokens each."""

    binary: Path
    model_path: Path
    alias: str
    log: Path
    chat_template: str = "chatml"
    slots: int = 1
    slot_ctx: int = 4096
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout_s: float = 180.0) -> LlamaServer:
        command = [
            str(self.binary),
            "-m",
            str(self.model_path),
            "--alias",
            self.alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--parallel",
            str(self.slots),
            "--ctx-size",
            str(self.slots * self.slot_ctx),
            "--chat-template",
            self.chat_template,
            "--threads",
            str(len(os.sched_getaffinity(0))),
        ]
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
                raise RuntimeError(f"llama-server did not come up: {tail}")
            time.sleep(0.25)
        return self

    def answers(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def busy_slots(self, client: httpx.Client) -> int:
        """How many slots are processing a request now (GET /slots)."""
        slots = client.get(f"http://127.0.0.1:{self.port}/slots").json()
        return sum(1 for slot in slots if slot.get("is_processing")) if isinstance(slots, list) else 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)


class BusyWatch:
    """Polls a llama-server's slots while a block runs; `most` is the most seen busy at once."""

    def __init__(self, server: LlamaServer, every_s: float = 0.1) -> None:
        self.server, self.every_s = server, every_s
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="busy-watch", daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.wait(self.every_s):
                try:
                    self.most = max(self.most, self.server.busy_slots(client))
                except (httpx.HTTPError, ValueError):
                    continue

    def __enter__(self) -> BusyWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def llama_server_binary() -> Path | None:
    """llama.cpp's llama-server as `scripts/llama-server build` left it, or $MEMBRANE_LLAMA_SERVER; None if absent."""
    given = os.environ.get("MEMBRANE_LLAMA_SERVER")
    if given:
        return Path(given)
    done = subprocess.run([str(ROOT / "scripts" / "llama-server"), "path"], capture_output=True, text=True)
    return Path(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None
