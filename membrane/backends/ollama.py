"""The Ollama backend, through the official `ollama` client (httpx underneath).

This module is the one boundary where ollama/httpx exceptions become
membrane.errors:
- ResponseError 404 -> ModelNotFound (permanent: pull or register the model);
- ResponseError 5xx, connection refused, timeouts, broken streams ->
  ModelUnavailable (retryable: the server is down, loading or overloaded);
- any other 4xx -> ExtractionFailed (the server refuses this request as such,
  so sending it again cannot help), or ModelRejected when registering a model.

Registration: `create_model` uploads a local GGUF (and a LoRA adapter GGUF) as
blobs and creates a named model from them, with an optional template,
parameters and system prompt; the fine-tuning helper registers its models so.

Thinking: `think=False` is sent only to models whose `show()` capabilities
list "thinking" (older servers and other models reject or ignore the field);
capabilities are cached per model for the life of the backend.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import ollama

from membrane.errors import ExtractionFailed, ModelNotFound, ModelRejected, ModelUnavailable
from membrane.logs import get_logger
from membrane.records import BackendCheck, Generation, GenerationRequest

if TYPE_CHECKING:
    from membrane.config import Settings

__all__ = ["OllamaBackend"]

log = get_logger(__name__)
T = TypeVar("T")
_NS = 1e9


class OllamaBackend:
    """Chat with JSON-schema `format`, temperature, num_predict and num_ctx options."""

    name = "ollama"

    def __init__(self, settings: Settings) -> None:
        self.host = settings.model.ollama_host
        self.timeout_s = settings.model.timeout_s
        self.keep_alive = settings.model.keep_alive
        self._client = ollama.Client(host=self.host, timeout=self.timeout_s)
        # Ollama keeps connections alive: close the pool with the backend rather
        # than leave its sockets to the garbage collector (a ResourceWarning each).
        self._closer = weakref.finalize(self, self._client.close)
        self._shown: dict[str, ollama.ShowResponse] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the pooled connections now (done anyway when the backend is collected)."""
        self._closer()

    def generate(self, request: GenerationRequest) -> Generation:
        think = False if "thinking" in self.capabilities(request.model) else None
        started = time.monotonic()
        response = self._call(
            request.model,
            lambda: self._client.chat(
                model=request.model,
                messages=list(request.messages),
                format=request.schema,
                think=think,
                options={
                    "temperature": request.temperature,
                    "num_predict": request.num_predict,
                    "num_ctx": request.num_ctx,
                    "seed": request.seed,
                },
                keep_alive=self.keep_alive,
                stream=False,
            ),
        )
        seconds = time.monotonic() - started
        message = response.message
        return Generation(
            text=message.content or "",
            model=request.model,
            prompt_tokens=response.prompt_eval_count or 0,
            completion_tokens=response.eval_count or 0,
            seconds=(response.total_duration / _NS) if response.total_duration else seconds,
            eval_seconds=(response.eval_duration / _NS) if response.eval_duration else None,
            thinking=message.thinking or None,
            done_reason=response.done_reason,
        )

    def _show(self, model: str) -> ollama.ShowResponse:
        """The model's `show()` response, fetched once per model."""
        with self._lock:
            cached = self._shown.get(model)
        if cached is not None:
            return cached
        shown = self._call(model, lambda: self._client.show(model))
        with self._lock:
            self._shown[model] = shown
        return shown

    def capabilities(self, model: str) -> tuple[str, ...]:
        """The model's `show()` capabilities ("completion", "thinking", ...), cached."""
        return tuple(self._show(model).capabilities or ())

    def list_models(self) -> list[str]:
        listed = self._call("", self._client.list)
        return sorted(m.model for m in listed.models if m.model)

    def parameters(self, model: str) -> str:
        details = self._show(model).details
        return (details.parameter_size or "") if details else ""

    def create_model(
        self,
        name: str,
        gguf: Path,  # the base model
        *,
        adapter: Path | None = None,  # a GGUF LoRA applied over the base
        template: str | None = None,  # a Go template; None: Ollama's choice for the GGUF
        parameters: dict[str, Any] | None = None,
        system: str | None = None,
    ) -> None:
        """Register `name` on the server from a local GGUF, optionally with a LoRA adapter GGUF.

        An existing model of that name is replaced. Raises ModelNotFound for a
        missing file, ModelRejected when the server refuses the files, template
        or parameters, ModelUnavailable when it cannot be reached.
        """
        # Fixed blob names: the server tells GGUF from safetensors by the ".gguf" suffix.
        files = {"model.gguf": self._upload(name, gguf)}
        adapters = {"adapter.gguf": self._upload(name, adapter)} if adapter is not None else None
        response = self._call(
            name,
            lambda: self._client.create(
                model=name,
                files=files,
                adapters=adapters,
                template=template,
                parameters=parameters,
                system=system,
                stream=False,
            ),
            registering=True,
        )
        if response.status != "success":
            raise ModelRejected(f"Ollama did not register {name!r}: status {response.status!r}")
        with self._lock:  # a re-registered name may have other capabilities
            self._shown.pop(name, None)
        log.info("ollama_model_created", model=name, gguf=str(gguf), adapter=str(adapter) if adapter else None)

    def _upload(self, name: str, path: Path) -> str:
        """The blob digest of a local file, uploaded to the server."""
        if not path.is_file():
            raise ModelNotFound(f"cannot register {name!r}: {str(path)!r} is not a file")
        return self._call(name, lambda: self._client.create_blob(path), registering=True)

    def check(self, model: str) -> BackendCheck:
        try:
            capabilities = self.capabilities(model)
        except ModelNotFound:
            return BackendCheck(False, f"Ollama at {self.host} has no model {model!r}", f"ollama pull {model}")
        except ModelUnavailable as exc:
            return BackendCheck(False, f"Ollama at {self.host} does not answer: {exc}", "start it: ollama serve")
        except ExtractionFailed as exc:
            return BackendCheck(False, f"Ollama at {self.host} refused show({model!r}): {exc}")
        thinking = " (thinking model: think=false is sent)" if "thinking" in capabilities else ""
        return BackendCheck(True, f"Ollama at {self.host} serves {model}{thinking}")

    def _call(self, model: str, call: Callable[[], T], *, registering: bool = False) -> T:
        """Run one client call, translating its exceptions (the only place that does)."""
        try:
            return call()
        except ollama.ResponseError as exc:
            if registering and 400 <= exc.status_code < 500:
                refused = f"Ollama refused to register {model!r}: {exc.error} (HTTP {exc.status_code})"
                raise ModelRejected(refused) from exc
            raise _translate_response_error(model, exc) from exc
        except ConnectionError as exc:  # the client's own "Failed to connect to Ollama"
            raise ModelUnavailable(f"cannot connect to Ollama at {self.host}") from exc
        except httpx.TimeoutException as exc:
            raise ModelUnavailable(
                f"Ollama at {self.host} did not answer within {self.timeout_s:g} s (model {model!r})",
                retry_after=self.timeout_s,
            ) from exc
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise ModelUnavailable(f"connection to Ollama at {self.host} failed: {exc}") from exc


def _translate_response_error(model: str, exc: ollama.ResponseError) -> Exception:
    status = exc.status_code
    if status == 404:
        return ModelNotFound(f"Ollama has no model {model!r}: {exc.error}", hint=f"Run `ollama pull {model}`.")
    if status >= 500 or status < 0:  # -1: an error reported inside a stream
        return ModelUnavailable(f"Ollama failed for model {model!r}: {exc.error} (HTTP {status})")
    log.warning("ollama_request_refused", model=model, status=status, error=str(exc.error))
    return ExtractionFailed(
        f"Ollama refused the request for model {model!r}: {exc.error} (HTTP {status})",
        model=model,
        raw_outputs=[],
        errors=[str(exc.error)],
    )
