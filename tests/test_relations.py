"""The canonical relation vocabulary: its file is consistent, and validation folds synonyms and turns inverse
forms around."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from membrane.config import Settings
from membrane.relations import canonical_vocabulary
from membrane.schema import Extraction, ExtractionRules


def _triples(extraction: Extraction) -> set[tuple[str, str, str]]:
    return {r.triple for r in extraction.relationships}


def test_the_shipped_vocabulary_is_consistent() -> None:
    """Every synonym and inverse points at a canonical type, and no type is both canonical and folded."""
    vocabulary = canonical_vocabulary()
    assert vocabulary.check() == []
    assert {"DEPLOYED_ON", "MANAGES", "PART_OF", "WORKS_AT"} <= set(vocabulary.canonical)


def test_inverse_forms_are_turned_around() -> None:
    """(A, FOUNDED_BY, B) is stored as (B, FOUNDED, A), and the endpoints stay entities."""
    rules = ExtractionRules(relation_inverses={"founded by": "FOUNDED"})
    extraction = Extraction.parse(
        {
            "entities": [{"name": "Acme", "role": "subject"}, {"name": "Ada", "role": "object"}],
            "relationships": [{"source": "Acme", "relation": "FOUNDED_BY", "target": "Ada"}],
        },
        rules,
    )
    assert _triples(extraction) == {("Ada", "FOUNDED", "Acme")}
    assert {e.name for e in extraction.entities} == {"Acme", "Ada"}


def test_canonical_settings_fold_synonyms_and_inverses(make_settings: Callable[..., Settings]) -> None:
    """With the default relations = "canonical", a synonym, a spelling and a passive all land on canonical types."""
    rules = make_settings().extraction.rules().unbounded()
    extraction = Extraction.parse(
        {
            "relationships": [
                {"source": "Restic", "relation": "requires", "target": "Go"},
                {"source": "Kleopatra", "relation": "DEVELOPED_BY", "target": "KDE"},
                {"source": "Acme", "relation": "headquartered in", "target": "Berlin"},
            ]
        },
        rules,
    )
    assert _triples(extraction) == {
        ("Restic", "DEPENDS_ON", "Go"),
        ("KDE", "DEVELOPS", "Kleopatra"),
        ("Acme", "LOCATED_IN", "Berlin"),
    }


def test_open_relations_keep_the_models_words(make_settings: Callable[..., Settings]) -> None:
    """relations = "open" folds nothing but the user's own synonyms."""
    settings = make_settings(extraction={"relations": "open", "relation_synonyms": {"HOSTED_ON": "RUNS_ON"}})
    extraction = Extraction.parse(
        {
            "relationships": [
                {"source": "A", "relation": "DEVELOPED_BY", "target": "B"},
                {"source": "C", "relation": "HOSTED_ON", "target": "D"},
            ]
        },
        settings.extraction.rules(),
    )
    assert _triples(extraction) == {("A", "DEVELOPED_BY", "B"), ("C", "RUNS_ON", "D")}


def test_a_vocabulary_keeps_only_folds_into_it(make_settings: Callable[..., Settings]) -> None:
    """With relation_vocabulary set, shipped folds into types outside it are left out (they would fail validation)."""
    rules = make_settings(extraction={"relation_vocabulary": ["DEPENDS_ON"]}).extraction.rules()
    assert set(rules.relation_synonyms.values()) == {"DEPENDS_ON"}
    assert rules.relation_inverses == {"DEPENDENCY_OF": "DEPENDS_ON"}


def test_enum_relations_constrain_decoding_to_the_canonical_types(make_settings: Callable[..., Settings]) -> None:
    """relations = "enum" makes the canonical types the schema's enum, and a type outside them fails validation."""
    from pydantic import ValidationError

    from membrane.schema import extraction_json_schema

    rules = make_settings(extraction={"relations": "enum"}).extraction.rules()
    schema = extraction_json_schema(rules)
    relation = schema["properties"]["relationships"]["items"]["properties"]["relation"]
    assert set(relation["enum"]) == set(canonical_vocabulary().canonical)
    folded = Extraction.parse({"relationships": [{"source": "A", "relation": "REQUIRES", "target": "B"}]}, rules)
    assert _triples(folded) == {("A", "DEPENDS_ON", "B")}
    with pytest.raises(ValidationError, match="not in the vocabulary"):
        Extraction.parse({"relationships": [{"source": "A", "relation": "FLIES_OVER", "target": "B"}]}, rules)


def test_training_labels_fold_only_when_asked(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """`train.fold_labels` folds a case's relation types as the bench folds gold labels; off, they train as written."""
    from membrane.train.trainer import gather_cases

    row = {
        "id": "f1",
        "text": "Kleopatra is developed by KDE and requires GnuPG to sign mail for its users.",
        "tags": [],
        "entities": [{"name": "Kleopatra", "role": "subject"}, {"name": "KDE", "role": "object"}],
        "relationships": [{"source": "Kleopatra", "relation": "DEVELOPED_BY", "target": "KDE"}],
    }
    (tmp_path / "cases.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    as_written = make_settings(train={"data": [str(tmp_path / "*.jsonl")]})
    folded = make_settings(train={"data": [str(tmp_path / "*.jsonl")], "fold_labels": True})
    assert _triples(gather_cases(as_written)[0].extraction) == {("Kleopatra", "DEVELOPED_BY", "KDE")}
    assert _triples(gather_cases(folded)[0].extraction) == {("KDE", "DEVELOPS", "Kleopatra")}
