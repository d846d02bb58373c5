"""The OpenAI-compatible backend: any server that speaks /v1/chat/completions
(vLLM, llama.cpp's llama-server, LM Studio, llama-cpp-python's server, Ollama's
/v1), through httpx.

This module is the one boundary where httpx exceptions and the server's HTTP
errors become membrane.errors:
- connection refused, a dropped connection, a timeout, HTTP 429 and 5xx ->
  ModelUnavailable (retryable: the server is down, busy or loading); a
  Retry-After header becomes retry_after;
- HTTP 401 and 403 -> ModelUnavailable too, worded as a refused API key: the
  captures wait for the key to be fixed rather than fail (as they do when Neo4j
  refuses its password), and `membrane doctor` names the cause;
- HTTP 404 -> ModelNotFound (permanent, as with Ollama: the server has no such
  model), or ConfigError on model.openai_base_url when the model listing itself is
  not there (a base URL without /v1);
- an error that names `response_format` (llama-cpp-python's server answers a
  json_schema with HTTP 500) -> ConfigError on model.openai_response_format:
  every request would be refused alike, so captures wait for the fix;
- any other 4xx -> ExtractionFailed (the server refuses this request as such,
  e.g. a prompt over its context, so sending it again cannot help).

No retries here: the pipeline's backoff retries a ModelUnavailable, so a
retry inside the client would only hold a worker for several timeouts.

The extraction's JSON schema is sent as response_format (model.openai_response_format):
`json_schema` with strict where the server supports it (the others enforce the
schema anyway), `json_object` with the schema beside it, or nothing. Reasoning a
server returns apart from the answer (`reasoning_content`, `reasoning`) is kept
as Generation.thinking; reasoning inlined in the answer is stripped by extract.py.
The API key goes only into the Authorization header; it is never logged.
"""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from membrane.errors import ConfigError, ExtractionFailed, MembraneError, ModelNotFound, ModelUnavailable
from membrane.logs import get_logger
from membrane.records import BackendCheck, Generation, GenerationRequest

if TYPE_CHECKING:
    from membrane.config import Settings

__all__ = ["OpenAIBackend"]

log = get_logger(__name__)
T = TypeVar("T")

# The doctor's probe: one tiny constrained answer shows that the server takes the
# model name, the key and the response_format before any capture depends on them.
_PROBE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}},
    "required": ["ok"],
    "additionalProperties": False,
}
_KEY_HINT = (
    "Put the server's API key in model.openai_api_key_file (or the systemd credential openai-api-key, "
    "or MEMBRANE_MODEL__OPENAI_API_KEY)."
)
_FORMAT_HINT = (
    'Set model.openai_response_format = "json_object" (llama-cpp-python\'s server) or "none" '
    "(a server that takes no response_format); `membrane doctor` checks it."
)


class _KeyRefused(ModelUnavailable):
    """The server refused the API key, or wants one: retryable like any ModelUnavailable."""

    hint = _KEY_HINT


class OpenAIBackend:
    """Chat completions with the extraction schema as response_format, max_tokens, temperature and seed."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        model = settings.model
        self.base_url = model.openai_base_url
        self.timeout_s = model.timeout_s
        self.response_format = model.openai_response_format
        self.strict = model.openai_strict
        self.extra_body = dict(model.openai_extra_body)
        key = settings.openai_api_key()
        self.has_key = bool(key)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # One pool for every worker thread: httpx.Client is thread-safe, so
        # daemon.concurrency workers keep that many requests in flight.
        self._client = httpx.Client(
            base_url=self.base_url + "/",
            headers=headers,
            timeout=httpx.Timeout(self.timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )
        # Close the pool with the backend rather than leave its sockets to the
        # garbage collector (a ResourceWarning each).
        self._closer = weakref.finalize(self, self._client.close)

    def close(self) -> None:
        """Close the pooled connections now (done anyway when the backend is collected)."""
        self._closer()

    # -- generation

    def generate(self, request: GenerationRequest) -> Generation:
        body: dict[str, Any] = {
            **self.extra_body,
            "model": request.model,
            "messages": list(request.messages),
            "max_tokens": request.num_predict,
            "temperature": request.temperature,
            "seed": request.seed,
            "stream": False,
        }
        if request.schema is not None and self.response_format != "none":
            body["response_format"] = self._response_format(request.schema)
        started = time.monotonic()
        data = self._post(request.model, "chat/completions", body)
        seconds = time.monotonic() - started
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
            usage = data.get("usage") or {}
            timings = data.get("timings") or {}  # llama-server's own figures
            predicted_ms = timings.get("predicted_ms")
            return Generation(
                text=message.get("content") or "",
                model=request.model,
                prompt_tokens=int(usage.get("prompt_tokens") or 0),
                completion_tokens=int(usage.get("completion_tokens") or 0),
                seconds=seconds,
                eval_seconds=float(predicted_ms) / 1000 if predicted_ms else None,
                thinking=message.get("reasoning_content") or message.get("reasoning") or None,
                done_reason=choice.get("finish_reason"),
            )
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise ModelUnavailable(
                f"{self.base_url} answered without a chat completion ({type(exc).__name__}: {exc})"
            ) from exc

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.response_format == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "extraction", "schema": schema, "strict": self.strict}}

    # -- listing and checks

    def list_models(self) -> list[str]:
        data = self._call("", lambda: self._client.get("models"))
        try:
            return sorted(str(entry["id"]) for entry in data["data"])
        except (KeyError, TypeError) as exc:
            raise ModelUnavailable(f"{self.base_url}/models answered without a model list") from exc

    def parameters(self, model: str) -> str:
        return ""  # the API does not say how large a model is

    def check(self, model: str) -> BackendCheck:
        """The server answers, takes the key, lists the model, and answers one constrained request."""
        try:
            served = self.list_models()
        except MembraneError as exc:
            return self._failed_check(exc)
        if model not in served and f"{model}:latest" not in served:
            listed = ", ".join(served) or "none"
            return BackendCheck(
                False,
                f"{self.base_url} does not serve {model!r} (it lists: {listed})",
                f"set model.name to a listed model, or load {model} on the server",
            )
        probe = GenerationRequest(
            model,
            ({"role": "user", "content": "Answer with ok = true."},),
            schema=_PROBE_SCHEMA,
            num_predict=8,
            num_ctx=512,
        )
        try:
            self.generate(probe)
        except MembraneError as exc:
            return self._failed_check(exc)
        constraint = (
            "no response_format" if self.response_format == "none" else f"response_format {self.response_format}"
        )
        return BackendCheck(True, f"{self.base_url} serves {model} and takes {constraint}")

    def _failed_check(self, exc: MembraneError) -> BackendCheck:
        if isinstance(exc, ConfigError):
            return BackendCheck(False, str(exc), exc.hint)
        if isinstance(exc, _KeyRefused):
            return BackendCheck(
                False, str(exc), "put the server's key in model.openai_api_key_file (or the openai-api-key credential)"
            )
        if isinstance(exc, ModelUnavailable):
            return BackendCheck(
                False, f"{self.base_url} does not answer: {exc}", "start the server, or fix model.openai_base_url"
            )
        return BackendCheck(False, f"{self.base_url} refused the check: {exc}", exc.hint)

    # -- the one boundary

    def _post(self, model: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(model, lambda: self._client.post(path, json=body))

    def _call(self, model: str, send: Callable[[], httpx.Response]) -> dict[str, Any]:
        """Send one request and return its JSON body, translating every failure (the only place that does).

        `model` is "" for the model listing."""
        try:
            response = send()
        except httpx.TimeoutException as exc:
            raise ModelUnavailable(
                f"{self.base_url} did not answer within {self.timeout_s:g} s (model {model!r})",
                retry_after=self.timeout_s,
            ) from exc
        except httpx.ConnectError as exc:
            raise ModelUnavailable(f"cannot connect to {self.base_url}: {exc}") from exc
        except (httpx.TransportError, httpx.StreamError) as exc:
            raise ModelUnavailable(f"connection to {self.base_url} failed: {exc}") from exc
        if response.status_code >= 400:
            raise self._http_error(model, response)
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelUnavailable(f"{self.base_url} answered HTTP {response.status_code} with no JSON") from exc
        if not isinstance(data, dict):
            raise ModelUnavailable(f"{self.base_url} answered HTTP {response.status_code} with no JSON object")
        return data

    def _http_error(self, model: str, response: httpx.Response) -> MembraneError:
        status = response.status_code
        message = _error_message(response)
        said = f"{message} (HTTP {status})"
        if status in (401, 403):
            keyed = "refused the API key" if self.has_key else "wants an API key"
            return _KeyRefused(f"{self.base_url} {keyed}: {said}")
        if "response_format" in message:
            return ConfigError(
                f"{self.base_url} refused response_format {self.response_format}: {said}",
                key="model.openai_response_format",
                hint=_FORMAT_HINT,
            )
        if status == 404 and not model:
            return ConfigError(
                f"no OpenAI-compatible API at {self.base_url}: GET /models answered {said}",
                key="model.openai_base_url",
                hint="Set model.openai_base_url to the server's API root, which usually ends in /v1.",
            )
        if status == 404:
            return ModelNotFound(
                f"{self.base_url} has no model {model!r}: {said}",
                hint=f"Load {model} on the server, or set model.name to a model it lists.",
            )
        if status == 429 or status >= 500:
            return ModelUnavailable(
                f"{self.base_url} failed for model {model!r}: {said}", retry_after=_retry_after(response)
            )
        log.warning("openai_request_refused", model=model, status=status, error=message)
        return ExtractionFailed(
            f"{self.base_url} refused the request for model {model!r}: {said}",
            model=f"{self.name}:{model}",
            raw_outputs=[],
            errors=[message],
            hint="The server refused the request itself; if it names the context length, lower model.num_ctx "
            "to the server's context per request (llama-server: --ctx-size / --parallel).",
        )


def _error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI's {"error": {"message"}}, vLLM's {"message"}, FastAPI's {"detail"}."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return " ".join(response.text.split())[:300] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        for value in (
            error.get("message") if isinstance(error, dict) else error,
            data.get("message"),
            data.get("detail"),
        ):
            if value:
                return " ".join(str(value).split())[:300]
    return " ".join(response.text.split())[:300]


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None
