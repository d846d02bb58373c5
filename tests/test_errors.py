"""membrane/errors.py: pydantic's validation errors worded as one line."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError, field_validator
from pydantic_core import ErrorDetails

from membrane.errors import error_key, error_message, validation_line


class _Point(BaseModel):
    x: int
    y: int
    z: int

    @field_validator("z")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value


def test_validation_line_joins_the_errors_and_counts_the_rest() -> None:
    """Each error as the caller words it, "; "-joined, then "(and N more)" past the limit."""
    with pytest.raises(ValidationError) as caught:
        _Point.model_validate({"x": "a", "z": -1})

    def describe(error: ErrorDetails) -> str:
        return f"{error_key(error)}: {error_message(error)}"

    assert validation_line(caught.value, describe) == (
        "x: Input should be a valid integer, unable to parse string as an integer; "
        "y: Field required; z: must be positive"
    )
    assert validation_line(caught.value, describe, limit=1) == (
        "x: Input should be a valid integer, unable to parse string as an integer (and 2 more)"
    )
