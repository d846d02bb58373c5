"""Records handed between stages: the bottom floor, imported by everyone, importing
nothing above membrane.schema.

ExtractionResult is the one list of an extraction record's fields: the
extractor returns it, the journal stores it (its columns are these field
names), resolution and the pipeline read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from membrane.schema import Extraction

__all__ = ["ExtractionResult"]


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
