"""Fuzzing model answers: parse_output turns any answer into a storable Extraction or InvalidOutput.

A deterministic slice (hypothesis derandomized, no example database); the
10,000-input run is benchmarks/fuzz_inputs.py.
"""

from __future__ import annotations

from hypothesis import example, given

from membrane.schema import ExtractionRules
from tests.support.fuzz import PER_INPUT_LIMIT_S, SUITE, answer_objects, classify_answer, model_answers

RULES = ExtractionRules()


def _check(raw: str) -> None:
    result = classify_answer(raw, RULES)
    assert result.ok, f"{result.outcome} ({result.detail}) for {raw[:200]!r}"
    assert result.seconds < PER_INPUT_LIMIT_S, f"{result.seconds:.1f} s for {raw[:200]!r}"


@SUITE
@given(model_answers())
@example("[" * 100_000)  # json's recursion limit
@example('{"entities": [{"name": "x"}], "relationships": [], "n": ' + "1" * 5000 + "}")  # int-to-str limit
@example('{"entities": [{"name": "\\ud800"}], "relationships": []}')  # a lone surrogate in a name
@example('{"entities": [], "relationships": [{"source": "A\\udfff", "relation": "USES", "target": "B"}]}')
def test_any_model_answer_is_parsed_or_rejected(raw: str) -> None:
    """Random JSON, schema near-misses, reasoning, fences, prose and cut-off answers keep the contract."""
    _check(raw)


@SUITE
@given(answer_objects())
def test_any_object_near_the_schema_is_parsed_or_rejected(value: object) -> None:
    """Objects with missing, renamed, extra or mistyped keys are an Extraction or a reason for repair."""
    import json

    _check(json.dumps(value, allow_nan=True))


def test_unclosed_reasoning_and_fences_are_linear() -> None:
    """Thousands of unclosed <think> tags or ``` fences in one answer are cleaned in well under the bound."""
    for raw in ("<think>" * 20_000, "```" * 40_000, "<think>x</think" * 10_000, "{" * 200_000):
        _check(raw)
