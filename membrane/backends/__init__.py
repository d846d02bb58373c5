"""The model-backend protocol and the one registry every backend goes through.

A backend turns a GenerationRequest (chat messages, an optional JSON schema,
token caps) into a Generation (raw text, token counts, timings); these records
and BackendCheck live in membrane.records and are offered here to plugins. It
never parses or validates the answer: that is extract.py's job. Each backend module
is the only place its client library is imported, and it translates that
library's exceptions into membrane.errors (ModelUnavailable: retry later;
ModelNotFound: permanent).

Built-in backends (embedded, ollama, openai, replay) are registered through the same
``register_backend`` a plugin would use; their modules are imported only when
a backend of that name is built, so llama.cpp is not loaded for Ollama users.
The backends never open the journal: the replay backend's recorded outputs,
when they come from the journal, are passed in by the caller (``recorded``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from membrane.errors import ConfigError
from membrane.records import BackendCheck, Generation, GenerationRequest

if TYPE_CHECKING:
    from membrane.config import Settings

__all__ = [
    "Backend",
    "BackendCheck",
    "Generation",
    "GenerationRequest",
    "RecordedOutputs",
    "backend_names",
    "get_backend",
    "register_backend",
]


class Backend(Protocol):
    name: str

    def generate(self, request: GenerationRequest) -> Generation: ...

    def list_models(self) -> list[str]: ...

    def check(self, model: str) -> BackendCheck: ...

    def parameters(self, model: str) -> str: ...


BackendFactory = Callable[["Settings"], Backend]
# Reads (text, raw output) pairs, such as the journal's successful extractions, for the replay backend.
RecordedOutputs = Callable[[], Iterable[tuple[str, str]]]


def _ollama(settings: Settings) -> Backend:
    from membrane.backends.ollama import OllamaBackend

    return OllamaBackend(settings)


def _openai(settings: Settings) -> Backend:
    from membrane.backends.openai import OpenAIBackend

    return OpenAIBackend(settings)


def _embedded(settings: Settings) -> Backend:
    from membrane.backends.embedded import EmbeddedBackend

    return EmbeddedBackend(settings)


def _replay(settings: Settings, recorded: RecordedOutputs | None = None) -> Backend:
    from membrane.backends.replay import ReplayBackend

    return ReplayBackend.from_settings(settings, recorded)


_FACTORIES: dict[str, BackendFactory] = {
    "embedded": _embedded,
    "ollama": _ollama,
    "openai": _openai,
    "replay": _replay,
}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make `factory` build the backend called `name` (replaces an existing one)."""
    _FACTORIES[name] = factory


def backend_names() -> list[str]:
    return sorted(_FACTORIES)


def get_backend(name: str, settings: Settings, *, recorded: RecordedOutputs | None = None) -> Backend:
    """Build the backend `name`; an unknown name is a ConfigError.

    `recorded` is what the built-in replay backend answers from when model.replay_file
    is unset (the callers pass the journal's recorded outputs); other backends ignore it.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        raise ConfigError(
            f"unknown model backend {name!r}; known: {', '.join(backend_names())}",
            key="model.backend",
        )
    if factory is _replay:
        return _replay(settings, recorded)
    return factory(settings)
