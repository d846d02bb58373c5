"""Records handed between stages: the bottom floor, imported by everyone, importing
nothing above membrane.schema.

GenerationRequest, Generation and BackendCheck are what the extractor, the
bench and the doctor exchange with any backend (membrane.backends offers them
to plugins). ExtractionResult is the one list of an extraction record's
fields: the extractor returns it, the journal stores it (its columns are
these field names), resolution and the pipeline read it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, get_args, get_type_hints

from membrane.schema import Extraction

__all__ = [
    "NO_GUARDS",
    "BackendCheck",
    "DecodingGuards",
    "Endpoints",
    "ExtractionResult",
    "Generation",
    "GenerationRequest",
    "Loops",
]

Endpoints = Literal["any", "entities"]  # "entities": endpoints kept to the answer's entity names
Loops = Literal["allow", "end_list"]  # "end_list": a list ends once an item repeats


@dataclass(frozen=True)
class DecodingGuards:
    """The checks the embedded backend adds to its greedy pick (extraction.endpoints and
    extraction.loops); other backends decode without them. Crosses to the model's child as a dict."""

    endpoints: Endpoints = "any"
    loops: Loops = "allow"

    @classmethod
    def from_wire(cls, data: dict[str, Any] | None) -> DecodingGuards:
        """The guards a child request names; a missing key keeps its default, an unknown value is a ValueError."""
        named = {f.name: data[f.name] for f in fields(cls) if data and f.name in data}
        for name, value in named.items():
            if value not in _GUARD_VALUES[name]:
                raise ValueError(f"decoding guard {name}={value!r}: expected one of {', '.join(_GUARD_VALUES[name])}")
        return cls(**named)


NO_GUARDS = DecodingGuards()
# Each guard's values, read from its Literal type, so a new guard is declared once.
_GUARD_VALUES = {name: get_args(hint) for name, hint in get_type_hints(DecodingGuards).items()}


@dataclass(frozen=True)
class GenerationRequest:
    """One model call. `schema` None means unconstrained output (benchmarks only)."""

    model: str
    messages: tuple[dict[str, str], ...]
    schema: dict[str, Any] | None
    num_predict: int
    num_ctx: int
    temperature: float = 0.0
    seed: int = 0
    text: str = ""  # the chunk being extracted; the replay backend's key
    attempt: int = 0  # 0 first try, 1.. repairs
    guards: DecodingGuards = NO_GUARDS


@dataclass(frozen=True)
class Generation:
    """A model's raw answer with its cost."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float  # wall clock of the whole call
    eval_seconds: float | None = None  # generation only, when the server reports it
    thinking: str | None = None  # reasoning the server returned separately
    done_reason: str | None = None  # "stop", "length" (hit num_predict), ...

    @property
    def tokens_per_second(self) -> float:
        seconds = self.eval_seconds if self.eval_seconds else self.seconds
        return self.completion_tokens / seconds if seconds > 0 else 0.0

    @property
    def truncated(self) -> bool:
        """True when generation stopped at the num_predict cap."""
        return self.done_reason == "length"


@dataclass(frozen=True)
class BackendCheck:
    """Result of a health check, for `membrane doctor`."""

    ok: bool
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class ExtractionResult:
    extraction: Extraction
    model: str
    backend: str
    prompt_version: str
    raw_outputs: tuple[str, ...]
    errors: tuple[str, ...]
    calls: int
    first_attempt_valid: bool
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    chunks: tuple[tuple[int, int], ...]

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0
