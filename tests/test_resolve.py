"""Entity resolution: keys, aliases, fuzzy matching, canonical relation types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from membrane.config import Settings
from membrane.errors import GraphWriteError
from membrane.resolve import CaptureFacts, Resolver, entity_key, normalize_timestamp
from membrane.schema import Extraction

SHA = "a" * 64


def resolve(resolver: Resolver, data: dict[str, Any], **overrides: str) -> CaptureFacts:
    fields = {
        "sha256": SHA,
        "path": "inbox/note.md",
        "ingested_at": "2026-11-28T12:00:00Z",
        "model": "embedded:smollm2-135m",
        "prompt_version": "v1",
        **overrides,
    }
    return resolver.resolve(Extraction.parse(data), **fields)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("The Raspberry Pi", "raspberry pi"),
        ("  raspberry   PI  ", "raspberry pi"),
        ("Raspberry-Pi!", "raspberry pi"),
        ("ＲＡＳＰＢＥＲＲＹ Ｐｉ", "raspberry pi"),  # full-width, NFKC
        ("Straße", "strasse"),  # casefold, not lower
        ("an Apple", "apple"),
        ("A", "a"),  # an article alone stays a name
        ("The", "the"),
        ("Node.js", "node.js"),
        ("C#", "c#"),
        ("AT&T", "at&t"),
        ("«Kubernetes»", "kubernetes"),
        ("}) DETACH DELETE n //", "detach delete n"),
        ("!!!", "!!!"),
        ("Café 🚀", "café 🚀"),
    ],
)
def test_entity_key_normalises_names(name: str, key: str) -> None:
    """Keys fold case, width, punctuation, whitespace and a leading article."""
    assert entity_key(name) == key


def test_surface_forms_become_sorted_unique_aliases(make_settings: Callable[..., Settings]) -> None:
    """Every spelling that meets at one key is kept, sorted and unique; the first is the name."""
    facts = resolve(
        Resolver(make_settings()),
        {
            "entities": [{"name": "the Pi", "role": "object"}, {"name": "Pi-hole", "role": "subject"}],
            "relationships": [{"source": "Pi-hole", "relation": "runs on", "target": "PI"}],
        },
    )
    by_key = {e.key: e for e in facts.entities}
    assert set(by_key) == {"pi", "pi hole"}
    assert by_key["pi"].aliases == ("PI", "the Pi")
    assert by_key["pi"].name == "the Pi"
    assert by_key["pi"].role == "object"
    assert [(r.source_key, r.type, r.target_key) for r in facts.relationships] == [("pi hole", "RUNS_ON", "pi")]


def test_resolution_is_deterministic(make_settings: Callable[..., Settings]) -> None:
    """Resolving the same extraction twice gives equal facts, in a stable order."""
    data = {
        "entities": [{"name": "Zeta"}, {"name": "alpha"}, {"name": "Mid"}],
        "relationships": [{"source": "Zeta", "relation": "uses", "target": "alpha"}],
    }
    resolver = Resolver(make_settings())
    first, second = resolve(resolver, data), resolve(resolver, data)
    assert first == second
    assert [e.key for e in first.entities] == ["alpha", "mid", "zeta"]


def test_relationship_between_two_spellings_of_one_entity_is_dropped(make_settings: Callable[..., Settings]) -> None:
    """A self-loop that appears only after resolution carries no fact and is dropped."""
    facts = resolve(
        Resolver(make_settings()),
        {"entities": [], "relationships": [{"source": "The NAS", "relation": "is", "target": "nas"}]},
    )
    assert facts.relationships == ()
    assert [e.key for e in facts.entities] == ["nas"]


def test_relation_synonyms_map_to_canonical_types(make_settings: Callable[..., Settings]) -> None:
    """The resolver applies the configured synonyms, like the validator does."""
    settings = make_settings(extraction={"relation_synonyms": {"runs on": "DEPLOYED_ON"}})
    facts = resolve(
        Resolver(settings), {"entities": [], "relationships": [{"source": "a", "relation": "RUNS_ON", "target": "b"}]}
    )
    assert [r.type for r in facts.relationships] == ["DEPLOYED_ON"]


def test_relation_outside_the_vocabulary_is_refused(make_settings: Callable[..., Settings]) -> None:
    """An extraction validated under other rules cannot smuggle in an unknown type."""
    settings = make_settings(extraction={"relation_vocabulary": ["DEPLOYED_ON"]})
    with pytest.raises(GraphWriteError, match=SHA):
        resolve(
            Resolver(settings), {"entities": [], "relationships": [{"source": "a", "relation": "owns", "target": "b"}]}
        )


def test_fuzzy_matching_is_off_by_default(make_settings: Callable[..., Settings]) -> None:
    """With fuzzy_threshold 0 the known keys are not even read."""

    def known() -> list[str]:
        raise AssertionError("known keys read although fuzzy matching is off")

    facts = resolve(Resolver(make_settings(), known), {"entities": [{"name": "Kubernetes clusters"}]})
    assert [e.key for e in facts.entities] == ["kubernetes clusters"]


def test_fuzzy_matching_merges_near_spellings_into_known_keys(make_settings: Callable[..., Settings]) -> None:
    """Above the threshold a new spelling takes the known key; below it, it stays new."""
    resolver = Resolver(make_settings(graph={"fuzzy_threshold": 92}), lambda: ["kubernetes cluster", "nas"])
    facts = resolve(resolver, {"entities": [{"name": "Kubernetes clusters"}, {"name": "Proxmox"}]})
    by_key = {e.key: e for e in facts.entities}
    assert set(by_key) == {"kubernetes cluster", "proxmox"}
    assert by_key["kubernetes cluster"].aliases == ("Kubernetes clusters",)


def test_fuzzy_matching_also_joins_spellings_within_one_capture(make_settings: Callable[..., Settings]) -> None:
    """Two near spellings in one capture meet at the first one's key."""
    resolver = Resolver(make_settings(graph={"fuzzy_threshold": 90}), list)
    facts = resolve(resolver, {"entities": [{"name": "Home Assistant"}, {"name": "Home Asistant"}]})
    assert [(e.key, e.aliases) for e in facts.entities] == [("home assistant", ("Home Asistant", "Home Assistant"))]


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("2026-11-28T12:00:00Z", "2026-11-28T12:00:00.000000Z"),
        ("2026-11-28T13:00:00+01:00", "2026-11-28T12:00:00.000000Z"),
        ("2026-11-28T12:00:00.5", "2026-11-28T12:00:00.500000Z"),
    ],
)
def test_ingested_at_is_normalised_to_utc(raw: str, normalised: str) -> None:
    """Equal instants get equal strings, so string order is time order."""
    assert normalize_timestamp(raw) == normalised


def test_bad_ingested_at_is_an_error() -> None:
    """A timestamp that is not ISO-8601 is refused, not stored."""
    with pytest.raises(ValueError):
        normalize_timestamp("yesterday")
