"""The Extraction schema: validation, normalisation, limits, and the JSON schema sent to models."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from membrane.schema import (
    MAX_NAME_LENGTH,
    RELATION_PATTERN,
    Extraction,
    ExtractionRules,
    compact_json_schema,
    extraction_json_schema,
    normalize_relation,
)


def _rel(source: str, relation: str, target: str) -> dict[str, str]:
    return {"source": source, "relation": relation, "target": target}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("deployed on", "DEPLOYED_ON"),
        ("deployedOn", "DEPLOYED_ON"),
        ("  works-at ", "WORKS_AT"),
        ("Zürich_office", "ZURICH_OFFICE"),
        ("runs__on!!", "RUNS_ON"),
        ("HAS_V2", "HAS_V2"),
    ],
)
def test_relation_normalised_to_upper_snake_case(raw: str, expected: str) -> None:
    """Any spelling of a relation becomes UPPER_SNAKE_CASE inside the safe alphabet."""
    assert normalize_relation(raw) == expected
    assert RELATION_PATTERN.match(expected)


@pytest.mark.parametrize("raw", ["", "  ", "42 things", "日本語", "`"])
def test_relation_without_a_leading_letter_is_rejected(raw: str) -> None:
    """A relation that cannot start with an ASCII letter after normalisation is invalid."""
    with pytest.raises(ValueError, match="UPPER_SNAKE_CASE"):
        normalize_relation(raw)


def test_cypher_injection_in_relation_is_neutralised() -> None:
    """Quotes, backticks and braces never survive into a relation type."""
    relation = normalize_relation("KNOWS`]->(x) DETACH DELETE x //")
    assert RELATION_PATTERN.match(relation)
    assert relation == "KNOWS_X_DETACH_DELETE_X"


def test_long_relation_is_cut_to_64_characters() -> None:
    """A relation longer than the pattern allows is cut, not rejected."""
    assert len(normalize_relation("a" * 100)) == 64


def test_names_are_trimmed_and_empty_names_rejected() -> None:
    """Names lose surrounding whitespace only; an empty name is a validation error."""
    extraction = Extraction.parse({"entities": [{"name": "  Alice \n", "role": "Subject"}]})
    assert extraction.entities[0].name == "Alice"
    assert extraction.entities[0].role == "subject"
    with pytest.raises(ValidationError, match="name is empty"):
        Extraction.parse({"entities": [{"name": "   ", "role": "subject"}]})


def test_name_length_limit() -> None:
    """Names up to 200 characters pass, longer ones fail."""
    Extraction.parse({"entities": [{"name": "x" * MAX_NAME_LENGTH}]})
    with pytest.raises(ValidationError, match="longer than 200"):
        Extraction.parse({"entities": [{"name": "x" * (MAX_NAME_LENGTH + 1)}]})


@pytest.mark.parametrize(
    "name",
    [
        'O\'Brien "the admin"',
        "`rm -rf /`",
        "{not: json}",
        "line one\nline two",
        "東京サーバー",
        "Ελληνικά",
        "سرور",
        "Ёжик",
        "}) MATCH (n) DETACH DELETE n //",
    ],
)
def test_hostile_names_survive_validation_intact(name: str) -> None:
    """Quotes, backticks, braces, newlines and non-Latin scripts are kept verbatim, through JSON too."""
    data = {"entities": [{"name": name, "role": "subject"}], "relationships": [_rel(name, "uses", "Linux")]}
    extraction = Extraction.parse_json(json.dumps(data, ensure_ascii=False))
    assert extraction.entities[0].name == name
    assert extraction.relationships[0].source == name
    assert extraction.relationships[0].relation == "USES"


def test_missing_endpoint_adds_the_entity() -> None:
    """A relationship endpoint not listed as an entity is added with the matching role."""
    extraction = Extraction.parse({"entities": [{"name": "Alice"}], "relationships": [_rel("Alice", "owns", "NAS")]})
    assert [(e.name, e.role) for e in extraction.entities] == [("Alice", "subject"), ("NAS", "object")]


def test_duplicates_and_self_loops_are_removed() -> None:
    """Same name case-insensitively and same triple collapse to the first; self-loops drop."""
    extraction = Extraction.parse(
        {
            "entities": [{"name": "Alice"}, {"name": "alice", "role": "object"}, {"name": "NAS"}],
            "relationships": [
                _rel("Alice", "owns", "NAS"),
                _rel("alice", "OWNS", "nas"),
                _rel("NAS", "is", "nas"),
            ],
        }
    )
    assert [e.name for e in extraction.entities] == ["Alice", "NAS"]
    assert [r.triple for r in extraction.relationships] == [("Alice", "OWNS", "NAS")]


def test_limits_are_enforced() -> None:
    """More entities or relationships than the rules allow is a validation error."""
    rules = ExtractionRules(max_entities=2, max_relationships=1)
    with pytest.raises(ValidationError, match="more than 2 entities"):
        Extraction.parse({"entities": [{"name": n} for n in "abc"]}, rules)
    with pytest.raises(ValidationError, match="more than 1 relationships"):
        Extraction.parse({"relationships": [_rel("a", "x", "b"), _rel("b", "y", "a")]}, rules)


def test_extra_keys_are_rejected() -> None:
    """Keys outside the schema are errors, at the top and inside items."""
    with pytest.raises(ValidationError):
        Extraction.parse({"entities": [], "relationships": [], "notes": "hi"})
    with pytest.raises(ValidationError):
        Extraction.parse({"entities": [{"name": "a", "role": "subject", "type": "Person"}]})


def test_vocabulary_with_synonyms() -> None:
    """Synonyms map to canonical relations; a relation outside the vocabulary is an error."""
    rules = ExtractionRules(
        relation_vocabulary=("DEPLOYED_ON", "WORKS_AT"), relation_synonyms={"runs on": "deployed_on"}
    )
    extraction = Extraction.parse({"relationships": [_rel("api", "Runs On", "k3s")]}, rules)
    assert extraction.relationships[0].relation == "DEPLOYED_ON"
    with pytest.raises(ValidationError, match="not in the vocabulary"):
        Extraction.parse({"relationships": [_rel("api", "likes", "k3s")]}, rules)


def test_merged_with_unions_and_deduplicates() -> None:
    """Merging chunk results keeps each entity and triple once, beyond per-chunk limits."""
    rules = ExtractionRules(max_entities=2, max_relationships=1)
    first = Extraction.parse({"relationships": [_rel("a", "x", "b")]}, rules)
    second = Extraction.parse({"relationships": [_rel("A", "X", "B")]}, rules)
    third = Extraction.parse({"relationships": [_rel("b", "y", "c")]}, rules)
    merged = first.merged_with(second).merged_with(third)
    assert [e.name for e in merged.entities] == ["a", "b", "c"]
    assert len(merged.relationships) == 2


def _walk(node: Any) -> list[dict[str, Any]]:
    found = []
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            found.extend(_walk(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_walk(value))
    return found


def test_json_schema_is_flat_bounded_and_strict() -> None:
    """The model schema has no $ref, every array has maxItems from the rules, no extra keys allowed."""
    schema = extraction_json_schema(ExtractionRules(max_entities=7, max_relationships=5))
    text = json.dumps(schema)
    assert "$ref" not in text and "$defs" not in text
    props = schema["properties"]
    assert props["entities"]["maxItems"] == 7
    assert props["relationships"]["maxItems"] == 5
    arrays = [n for n in _walk(schema) if n.get("type") == "array"]
    assert arrays and all("maxItems" in n for n in arrays)
    objects = [n for n in _walk(schema) if n.get("type") == "object"]
    assert all(n["additionalProperties"] is False and n["required"] for n in objects)


def test_json_schema_vocabulary_becomes_enum() -> None:
    """A configured vocabulary turns the relation into an enum of canonical names."""
    schema = extraction_json_schema(ExtractionRules(relation_vocabulary=("DEPLOYED_ON", "WORKS_AT")))
    relation = schema["properties"]["relationships"]["items"]["properties"]["relation"]
    assert relation == {"type": "string", "enum": ["DEPLOYED_ON", "WORKS_AT"]}


def test_compact_answer_parses_to_the_same_extraction() -> None:
    """Names and [source, RELATION, target] lists give the extraction the objects give, roles derived
    by the labelling rule (object only when never a source), and compact() writes it back."""
    from tests.support.pipeline import REFERENCE

    helm = {"name": "Helm", "role": "subject"}  # in no relationship: a subject by the rule
    objects = Extraction.parse({**REFERENCE, "entities": [*REFERENCE["entities"], helm]})
    compact = {
        "entities": ["Docker", "Kubernetes cluster", "DevOps team", "Helm"],
        "relationships": [
            ["Docker", "deployed on", "Kubernetes cluster"],
            ["DevOps team", "MANAGES", "Kubernetes cluster"],
        ],
    }
    assert Extraction.parse(compact) == objects
    assert Extraction.parse(objects.compact()) == objects
    assert objects.compact()["relationships"][0] == ["Docker", "DEPLOYED_ON", "Kubernetes cluster"]


@pytest.mark.parametrize("bad", [["Docker", "RUNS_ON"], ["a", "B", "c", "d"], []])
def test_compact_relationship_must_be_a_triple(bad: list[str]) -> None:
    with pytest.raises(ValidationError, match="source, relation, target"):
        Extraction.parse({"entities": ["a"], "relationships": [bad]})


def test_compact_schema_is_bounded_and_fixes_three_items() -> None:
    """The compact schema bounds both lists by the rules and each relationship to exactly three strings."""
    schema = compact_json_schema(ExtractionRules(max_entities=7, max_relationships=5, relation_vocabulary=("USES",)))
    entities, relationships = schema["properties"]["entities"], schema["properties"]["relationships"]
    assert entities["maxItems"] == 7 and entities["items"]["type"] == "string"
    assert relationships["maxItems"] == 5
    item = relationships["items"]
    assert item["minItems"] == item["maxItems"] == 3 and item["items"] is False
    assert item["prefixItems"][1] == {"type": "string", "enum": ["USES"]}
    assert schema["additionalProperties"] is False and schema["required"] == ["entities", "relationships"]
