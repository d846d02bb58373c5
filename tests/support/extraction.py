"""Building a records.ExtractionResult in tests: what a model call would have produced."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from membrane.records import ExtractionResult
from membrane.schema import UNBOUNDED_RULES, Extraction


def make_result(
    extraction: Mapping[str, Any] | None = None,
    *,
    raw_outputs: Sequence[str] = ("{}",),
    chunks: Sequence[Sequence[int]] = (),
    **fields: Any,
) -> ExtractionResult:
    """An ExtractionResult with test defaults; `fields` overrides any other field by name."""
    values: dict[str, Any] = {
        "model": "m",
        "backend": "b",
        "prompt_version": "p",
        "errors": (),
        "calls": 1,
        "first_attempt_valid": True,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "seconds": 0.0,
    }
    values.update(fields)
    return ExtractionResult(
        extraction=Extraction.parse(dict(extraction or {}), UNBOUNDED_RULES),
        raw_outputs=tuple(raw_outputs),
        chunks=tuple((int(a), int(b)) for a, b in chunks),
        **values,
    )
