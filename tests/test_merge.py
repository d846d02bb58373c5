"""The one merge rule (merge.merge_facts) and the export script export.py writes
from it: pure data in, pure data out, no database needed."""

from __future__ import annotations

import itertools

import pytest

from membrane.errors import GraphWriteError
from membrane.export import cypher_statements
from membrane.merge import MergedEntity, MergedRelationship, merge_facts
from membrane.resolve import CaptureFacts, ResolvedEntity, ResolvedRelationship
from membrane.schema import RELATION_PATTERN, is_relation_type, normalize_relation, relation_pattern


def _capture(
    sha: str, at: str, model: str, names: dict[str, tuple[str, ...]], rels: tuple[tuple[str, str, str], ...] = ()
) -> CaptureFacts:
    return CaptureFacts(
        sha256=sha * 64,
        path=f"{sha}.md",
        ingested_at=f"2026-11-{at}T12:00:00.000000Z",
        captured_at=f"2026-11-{at}T12:00:00Z",
        captured_utc=f"2026-11-{at}T12:00:00.000000Z",
        model=model,
        prompt_version="v1",
        entities=tuple(ResolvedEntity(key, forms[0], "subject", forms) for key, forms in sorted(names.items())),
        relationships=tuple(ResolvedRelationship(*rel) for rel in rels),
    )


OLD = _capture("a", "01", "replay:b", {"pi": ("Pi",), "lab": ("Lab",)}, (("pi", "LOCATED_IN", "lab"),))
MID = _capture("b", "02", "replay:a", {"pi": ("Raspberry Pi", "pi")}, ())
NEW = _capture("c", "03", "replay:a", {"pi": ("PI",), "lab": ("the lab",)}, (("pi", "LOCATED_IN", "lab"),))


def test_entities_take_the_alias_union_and_the_seen_range() -> None:
    """An entity's aliases are every capture's forms, its name the oldest capture's, its times their min and max."""
    merged = merge_facts([NEW, OLD, MID])
    assert merged.entities == (
        MergedEntity("lab", "Lab", ("Lab", "the lab"), OLD.ingested_at, NEW.ingested_at),
        MergedEntity("pi", "Pi", ("PI", "Pi", "Raspberry Pi", "pi"), OLD.ingested_at, NEW.ingested_at),
    )


def test_the_newest_source_names_the_model() -> None:
    """A relationship lists every supporting capture; its model is its newest source's, not the last one given."""
    merged = merge_facts([NEW, OLD])
    assert merged.relationships == (
        MergedRelationship(
            "pi", "LOCATED_IN", "lab", (OLD.sha256, NEW.sha256), OLD.ingested_at, NEW.ingested_at, "replay:a"
        ),
    )


def test_a_tie_in_time_goes_to_the_greater_model_name() -> None:
    """Two sources ingested at the same moment: the relationship names the greater model, in any order."""
    rel = (("pi", "LOCATED_IN", "lab"),)
    one = _capture("d", "05", "embedded:z", {"pi": ("Pi",), "lab": ("Lab",)}, rel)
    two = _capture("e", "05", "embedded:a", {"pi": ("Pi",), "lab": ("Lab",)}, rel)
    assert {merge_facts(order).relationships[0].model for order in ([one, two], [two, one])} == {"embedded:z"}


def test_the_merge_does_not_depend_on_the_order_given() -> None:
    """Every order of the same captures merges to the same graph, captures listed oldest first."""
    results = {merge_facts(order) for order in itertools.permutations([OLD, MID, NEW])}
    assert len(results) == 1
    assert [c.sha256 for c in results.pop().captures] == [OLD.sha256, MID.sha256, NEW.sha256]


def test_a_capture_given_twice_counts_once() -> None:
    """The same sha256 twice (a batch holding a re-ingest) is one capture, the last version given."""
    edited = _capture("a", "01", "replay:b", {"pi": ("Pi",)})
    merged = merge_facts([OLD, edited])
    assert merged.captures == (edited,) and merged.relationships == ()
    assert [e.key for c in merged.captures for e in c.entities] == ["pi"]


def test_the_export_script_refuses_a_type_outside_the_alphabet() -> None:
    """A forged relationship type stops the Cypher export before it writes a line."""
    forged = _capture("f", "06", "replay:a", {"x": ("x",), "y": ("y",)}, (("x", "X`]->() DELETE n //", "y"),))
    statements = cypher_statements(merge_facts([OLD, forged]))
    with pytest.raises(GraphWriteError):
        next(statements)


def test_the_export_script_places_types_backquoted_after_the_check() -> None:
    """Each relationship type gets its own statement, the type backquoted, the data only in :param lines."""
    lines = list(cypher_statements(merge_facts([OLD, NEW])))
    assert lines[0].startswith(":param captures => [{sha256: 'aaaa")
    assert [line for line in lines if "`" in line] == [
        line for line in lines if line.startswith("UNWIND $rows") and "[r:`LOCATED_IN`]" in line
    ]
    assert len([line for line in lines if line.startswith(":param ")]) == 4


@pytest.mark.parametrize("value", ["DEPLOYED_ON", "A", "X" * 64])
def test_types_in_the_alphabet_pass_the_one_check(value: str) -> None:
    """The one relation check accepts what normalize_relation produces, up to 64 characters."""
    assert is_relation_type(value) and normalize_relation(value) == value


@pytest.mark.parametrize("value", ["X" * 65, "deployed_on", "_X", "1X", "A B", "É", "", None, 7])
def test_anything_else_fails_the_one_check(value: object) -> None:
    """Lower case, a leading digit or underscore, spaces, non-ASCII, too long, or not a string: refused."""
    assert not is_relation_type(value)


def test_the_models_pattern_is_a_shorter_form_of_the_same_alphabet() -> None:
    """The JSON-schema pattern sent to models is the alphabet with a shorter cap, not a second definition."""
    assert relation_pattern() == RELATION_PATTERN.pattern
    assert relation_pattern(40) == "^[A-Z][A-Z0-9_]{0,39}$"
