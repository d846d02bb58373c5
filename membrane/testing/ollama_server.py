"""FakeOllama: a local HTTP server imitating the Ollama API, only for what the real
server cannot produce with the tiny models MemBrane tests with.

Everything a real Ollama can serve is tested against the real server
(scripts/ollama-local, the `ollama_server` fixture). FakeOllama is for:
- a thinking model that reasons before it answers (think=true/false, and
  reasoning inlined as ``<think>...</think>`` when the request says nothing);
- malformed output: scripted answers that are broken JSON, prose, or exactly
  the reference labels (the bench's scoring and promotion tests);
- a hang: `delay_s` before answering, for client timeouts;
- an outage: stop() and start() again on the same port.
tests/test_backend_ollama.py sends the same requests to it and to the real
server and compares the answers' keys and value types, so it cannot drift.

Usage::

    with FakeOllama() as server:
        server.add_scripted("qwen3:fake", ['{"entities": [], "relationships": []}'],
                            thinking="Let me think...")
        settings = make_settings(model={"backend": "ollama", "ollama_host": server.url,
                                        "name": "qwen3:fake"})
        ...
        server.chat_requests()[-1]["format"]   # the schema the client sent
        server.stop(); server.start()          # an outage, same port

Endpoints: POST /api/chat (stream false, or true as NDJSON; the API's default
is true), POST /api/generate (minimal), GET /api/tags, POST /api/show
(capabilities, details.parameter_size), GET /api/ps, GET /api/version. An
unknown model answers 404 {"error": "model '<name>' not found"}, like Ollama.
No blobs and no create: register models on the real server.

ScriptedModel: `outputs` returned in turn (the last repeats); `thinking`
reasoning a thinking-capable model emits: as `message.thinking` when the
request says think=true, not at all for think=false, inlined when the request
says nothing; `delay_s` before answering; `eval_count` tokens reported ~
characters / 4. Every request is recorded in `requests` (method, path, parsed
JSON body).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOllama", "RecordedRequest", "ScriptedModel"]

VERSION = "0.12.6"


@dataclass
class ScriptedModel:
    outputs: list[str]
    thinking: str | None = None  # set: the model has the "thinking" capability
    delay_s: float = 0.0
    parameter_size: str = "1.5B"
    family: str = "qwen3"
    quantization_level: str = "Q4_K_M"
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def capabilities(self) -> list[str]:
        return ["completion", "thinking"] if self.thinking is not None else ["completion"]

    def answer(self, body: dict[str, Any]) -> tuple[str, str | None, str]:
        """(content, thinking, done_reason) for one request."""
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:  # the server answers concurrent requests on threads
            output = self.outputs[min(self.calls, len(self.outputs) - 1)]
            self.calls += 1
        think = body.get("think")
        if self.thinking is None or think is False:
            return output, None, "stop"
        if think:
            return output, self.thinking, "stop"
        return f"<think>{self.thinking}</think>\n{output}", None, "stop"


Model = ScriptedModel


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    body: dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class FakeOllama:
    """The server; a context manager that starts on 127.0.0.1 and a free port."""

    def __init__(self, port: int = 0) -> None:
        self.models: dict[str, Model] = {}
        self.requests: list[RecordedRequest] = []
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle
    def start(self) -> FakeOllama:
        """Start serving (again, on the same port after stop())."""
        handler = type("Handler", (_Handler,), {"fake": self})
        server = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-ollama", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; connections are refused until start()."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # -- models
    def add_scripted(self, name: str, outputs: list[str], **options: Any) -> ScriptedModel:
        model = ScriptedModel(list(outputs), **options)
        self.models[name] = model
        return model

    def chat_requests(self) -> list[dict[str, Any]]:
        """Bodies of the /api/chat requests received, oldest first."""
        return [r.body for r in self.requests if r.path == "/api/chat"]

    def record(self, method: str, path: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(method, path, body))


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOllama
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        return

    # -- plumbing
    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            body = {}
        return body if isinstance(body, dict) else {}

    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        data = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")  # no pooled connection outlives stop()
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, parts: Iterator[dict[str, Any]]) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for part in parts:
            line = json.dumps(part).encode("utf-8") + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def _model(self, body: dict[str, Any]) -> tuple[str, Model | None]:
        name = str(body.get("model") or body.get("name") or "")
        model = self.fake.models.get(name)
        if model is None:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"model '{name}' not found"})
        return name, model

    # -- routes
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.fake.record("GET", self.path, {})
        if self.path == "/api/version":
            self._send(HTTPStatus.OK, {"version": VERSION})
        elif self.path == "/api/tags":
            self._send(HTTPStatus.OK, {"models": [self._listing(n, m) for n, m in self.fake.models.items()]})
        elif self.path == "/api/ps":
            self._send(HTTPStatus.OK, {"models": [self._running(n, m) for n, m in self.fake.models.items()]})
        elif self.path in ("/", ""):
            self._send(HTTPStatus.OK, "Ollama is running")
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        body = self._body()
        self.fake.record("POST", self.path, body)
        routes = {"/api/chat": self._chat, "/api/generate": self._generate, "/api/show": self._show}
        route = routes.get(self.path)
        if route is not None:
            route(body)
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": "not found"})

    @staticmethod
    def _details(model: Model) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": model.family,
            "families": [model.family],
            "parameter_size": model.parameter_size,
            "quantization_level": model.quantization_level,
        }

    def _listing(self, name: str, model: Model) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": _now(),
            "size": 0,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": self._details(model),
        }

    def _running(self, name: str, model: Model) -> dict[str, Any]:
        """An /api/ps entry: every registered model counts as loaded, on the CPU."""
        return {
            "name": name,
            "model": name,
            "size": 0,
            "digest": hashlib.sha256(name.encode()).hexdigest(),
            "details": self._details(model),
            "expires_at": _now(),
            "size_vram": 0,
            "context_length": 4096,
        }

    def _show(self, body: dict[str, Any]) -> None:
        _, model = self._model(body)
        if model is None:
            return
        self._send(
            HTTPStatus.OK,
            {
                "modelfile": "",
                "parameters": "",
                "template": "",
                "details": self._details(model),
                "model_info": {"general.architecture": model.family, "general.parameter_count": 0},
                "tensors": [{"name": "token_embd.weight", "type": "Q4_K", "shape": [1024, 151936]}],
                "capabilities": list(model.capabilities),
                "modified_at": _now(),
            },
        )

    def _answer(self, body: dict[str, Any], model: Model) -> tuple[str, str | None, str, float]:
        started = time.monotonic()
        content, thinking, done_reason = model.answer(body)
        return content, thinking, done_reason, time.monotonic() - started

    def _counts(self, body: dict[str, Any], content: str, thinking: str | None, seconds: float) -> dict[str, Any]:
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages") or []) or len(
            str(body.get("prompt", ""))
        )
        eval_count = max(1, (len(content) + len(thinking or "")) // 4)
        nanos = max(1, int(seconds * 1e9))
        return {
            "total_duration": nanos,
            "load_duration": 0,
            "prompt_eval_count": max(1, prompt_chars // 4),
            "prompt_eval_duration": nanos // 10,
            "eval_count": eval_count,
            "eval_duration": nanos - nanos // 10 or 1,
        }

    def _thinking_refused(self, name: str, model: Model, body: dict[str, Any]) -> bool:
        """Like Ollama: think=true for a model without the thinking capability is a 400."""
        if body.get("think") is True and "thinking" not in model.capabilities:
            self._send(HTTPStatus.BAD_REQUEST, {"error": f'"{name}" does not support thinking'})
            return True
        return False

    def _chat(self, body: dict[str, Any]) -> None:
        name, model = self._model(body)
        if model is None or self._thinking_refused(name, model, body):
            return
        content, thinking, done_reason, seconds = self._answer(body, model)
        final = {"model": name, "created_at": _now(), "done": True, "done_reason": done_reason}
        final |= self._counts(body, content, thinking, seconds)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if thinking is not None:
            message["thinking"] = thinking
        if body.get("stream", True) is False:
            self._send(HTTPStatus.OK, final | {"message": message})
            return

        def parts() -> Iterator[dict[str, Any]]:
            if thinking is not None:
                yield {
                    "model": name,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": "", "thinking": thinking},
                    "done": False,
                }
            for i in range(0, len(content), 16):
                yield {
                    "model": name,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": content[i : i + 16]},
                    "done": False,
                }
            yield final | {"message": {"role": "assistant", "content": ""}}

        self._stream(parts())

    def _generate(self, body: dict[str, Any]) -> None:
        name, model = self._model(body)
        if model is None:
            return
        content, thinking, done_reason, seconds = self._answer(body, model)
        final = {"model": name, "created_at": _now(), "response": content, "done": True, "done_reason": done_reason}
        final |= self._counts(body, content, thinking, seconds)
        if thinking is not None:
            final["thinking"] = thinking
        if body.get("stream", True) is False:
            self._send(HTTPStatus.OK, final)
        else:
            self._stream(iter([final]))
