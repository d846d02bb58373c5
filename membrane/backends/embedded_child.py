"""The embedded model's child process: one llama.cpp model, serving chat requests over a pipe.

embedded.py starts it as ``python -m membrane.backends.embedded_child`` and
supervises it; if native code dies here (SIGSEGV, SIGILL, SIGABRT, the OOM
killer's SIGKILL) only this process goes, and the parent turns the signal into
ModelCrashed. The frame format is a 4-byte big-endian length and a UTF-8 JSON
object: requests on stdin, replies on the pipe that was fd 1 at start. fd 1 is
then pointed at stderr, so nothing llama.cpp or Python prints can corrupt a frame.

The first request is {"spec": ModelSpec}; the child loads the model and replies
{"ready": {...}} or {"error": {...}}. Each later {"op": "chat", ...} gets
{"ok": <llama.cpp response>} or {"error": {...}}. EOF on stdin: the child frees
the model and exits 0. SIGINT is ignored: Ctrl-C reaches the whole process
group, and the parent decides when its child ends.

Prefix reuse: the child keeps one Llama object for its life, and llama-cpp-
python's `Llama.generate` keeps the KV cache of the longest token prefix this
call shares with the previous one. Extraction prompts start with the same
system prompt and worked example, so after the first call only the capture's
own tokens are evaluated. `reuse_prefix=False` resets the context before every
call (the "before" of benchmarks/prefix_cache.py).

Constrained greedy decoding goes through membrane/backends/sampling.py, which
tests only the picked token against the grammar (the same answers, about four
times faster with Gemma-3's 262k-token vocabulary).

Fault hook, for tests and `membrane doctor` only: with the environment variable
MEMBRANE_EMBEDDED_FAULT=KIND[:TEXT] when the child is started (the parent reads
it into ModelSpec.fault), each chat request (only those whose messages contain
TEXT, when given) dies the way a broken build would, before llama.cpp runs:
segv reads address 0 through ctypes (a real SIGSEGV in native code), abort calls
abort(3), ill and kill deliver SIGILL and SIGKILL (an OOM kill) to itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import IO, TYPE_CHECKING, Any

from membrane.records import DecodingGuards

if TYPE_CHECKING:
    from membrane.backends.sampling import Sampling

__all__ = ["FAULT_ENV", "FAULTS", "Engine", "ModelSpec", "read_frame", "write_frame"]

FAULT_ENV = "MEMBRANE_EMBEDDED_FAULT"
_HEADER = struct.Struct(">I")


@dataclass(frozen=True)
class ModelSpec:
    """What a child loads; also the key of the warm child in the parent."""

    path: str
    chat_format: str
    n_ctx: int
    lora_path: str = ""
    reuse_prefix: bool = True
    fault: str = ""  # MEMBRANE_EMBEDDED_FAULT at start; "" in normal use
    threads: int = 0  # llama.cpp threads; 0: every CPU this process may use

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class LoadError(Exception):
    """The model cannot be loaded here (missing llama-cpp-python, a bad file or adapter)."""


# -- frames


def write_frame(stream: IO[bytes], message: dict[str, Any]) -> None:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    stream.write(_HEADER.pack(len(body)) + body)
    stream.flush()


def read_frame(stream: IO[bytes]) -> dict[str, Any] | None:
    """The next message, or None at EOF (also a frame cut short: the writer died)."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return json.loads(body)  # type: ignore[no-any-return]


# -- faults


def _segv() -> None:
    ctypes.string_at(0)


def _signal_self(signum: int) -> Callable[[], None]:
    return lambda: os.kill(os.getpid(), signum)


FAULTS: dict[str, Callable[[], None]] = {
    "segv": _segv,
    "abort": os.abort,
    "ill": _signal_self(signal.SIGILL),
    "kill": _signal_self(signal.SIGKILL),
}


def _maybe_fault(fault: str, messages: list[dict[str, str]]) -> None:
    kind, _, trigger = fault.partition(":")
    if trigger and not any(trigger in str(m.get("content", "")) for m in messages):
        return
    FAULTS[kind]()


# -- the model


class Engine:
    """One llama.cpp model in this process: what the child runs, and what
    benchmarks/child_overhead.py calls directly as the in-process baseline."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.llama, self.sampling = _open_llama(spec)

    def chat(self, request: dict[str, Any]) -> dict[str, Any]:
        """One chat completion; the llama.cpp response plus this call's prompt evaluation counts."""
        import llama_cpp

        messages = request["messages"]
        if self.spec.fault:
            _maybe_fault(self.spec.fault, messages)
        if not self.spec.reuse_prefix:
            self.llama.reset()
        schema = request.get("schema")
        self.sampling.guards = DecodingGuards.from_wire(request.get("guards"))
        started = time.perf_counter()
        llama_cpp.llama_perf_context_reset(self.llama.ctx)
        response: dict[str, Any] = self.llama.create_chat_completion(
            messages=messages,
            response_format={"type": "json_object", "schema": schema} if schema is not None else None,
            max_tokens=request["max_tokens"],
            temperature=request.get("temperature", 0.0),
            seed=request.get("seed", 0),
        )
        perf = llama_cpp.llama_perf_context(self.llama.ctx)
        # n_p_eval: tokens decoded in prompt batches this call (the suffix after the reused prefix).
        response["membrane"] = {
            "prompt_eval_tokens": perf.n_p_eval,
            "prompt_eval_ms": perf.t_p_eval_ms,
            "eval_tokens": perf.n_eval,
            "eval_ms": perf.t_eval_ms,
            "chat_ms": (time.perf_counter() - started) * 1000,
        }
        return response

    def close(self) -> None:
        self.llama.close()


def _open_llama(spec: ModelSpec) -> tuple[Any, Sampling]:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise LoadError(f"llama-cpp-python is not installed ({exc})") from exc
    what = f"{spec.path!r} with LoRA adapter {spec.lora_path!r}" if spec.lora_path else repr(spec.path)
    try:
        threads = spec.threads or len(os.sched_getaffinity(0))
        llama = Llama(
            model_path=spec.path,
            n_ctx=spec.n_ctx,
            chat_format=spec.chat_format,
            lora_path=spec.lora_path or None,
            verbose=False,
            seed=0,
            n_threads=threads,
            n_threads_batch=threads,
        )
    except (ValueError, RuntimeError) as exc:
        raise LoadError(f"llama.cpp cannot load {what}: {exc}") from exc
    # llama-cpp-python 0.3.36 tests the adapter pointer with `is None`, but ctypes returns a
    # NULL pointer object, so an adapter llama.cpp refused would be skipped without a word.
    if spec.lora_path and not llama._lora_adapter:
        llama.close()
        raise LoadError(f"llama.cpp cannot load {what}: not a LoRA adapter for this model (see its log)")
    from membrane.backends.sampling import install

    return llama, install(llama)  # greedy constrained answers check only the picked token against the grammar


def _handle(engine: Engine, request: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"ok": engine.chat(request)}
    except ValueError as exc:  # prompt longer than the context, a schema it cannot compile
        return {"error": {"kind": "refused", "message": str(exc)}}


def serve(requests: IO[bytes], replies: IO[bytes]) -> int:
    first = read_frame(requests)
    if first is None:
        return 0
    spec = ModelSpec(**first["spec"])
    if spec.fault:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # deliberate crashes leave no core files
    try:
        engine = Engine(spec)
    except LoadError as exc:
        write_frame(replies, {"error": {"kind": "load", "message": str(exc)}})
        return 0
    threads = {
        "threads": engine.llama.context_params.n_threads,
        "threads_batch": engine.llama.context_params.n_threads_batch,
    }
    write_frame(replies, {"ready": {"pid": os.getpid(), **threads}})
    while (request := read_frame(requests)) is not None:
        write_frame(replies, _handle(engine, request))
    engine.close()
    return 0


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    sys.exit(main())
