"""The canonical relation vocabulary: the relationship types the graph uses,
the synonyms folded into them and the inverse forms turned around into them.

The vocabulary ships as ``membrane/relations.toml`` (documented entry by
entry there). It sits at the bottom of the package: config builds the
extraction rules from it, and the rules apply it wherever an Extraction is
validated (model answers, training labels, evaluation labels), so the model,
the graph and the scores all speak one vocabulary.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import TYPE_CHECKING

from membrane.schema import normalize_relation

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["RelationVocabulary", "canonical_vocabulary"]


@dataclass(frozen=True)
class RelationVocabulary:
    """Canonical types (with their meaning), synonyms -> type, inverse forms -> type."""

    canonical: Mapping[str, str]
    synonyms: Mapping[str, str]
    inverses: Mapping[str, str]

    def check(self) -> list[str]:
        """Entries that point outside the canonical types or are both a synonym and an inverse."""
        problems = [f"synonym {k} -> {v}: not canonical" for k, v in self.synonyms.items() if v not in self.canonical]
        problems += [f"inverse {k} -> {v}: not canonical" for k, v in self.inverses.items() if v not in self.canonical]
        problems += [f"{k} is both a synonym and an inverse" for k in self.synonyms.keys() & self.inverses.keys()]
        problems += [
            f"{k} is canonical and folded"
            for k in self.canonical.keys() & (self.synonyms.keys() | self.inverses.keys())
        ]
        return problems


def _table(data: dict[str, object], name: str) -> Mapping[str, str]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise ValueError(f"relations.toml: [{name}] is not a table")
    return MappingProxyType(
        {normalize_relation(k): normalize_relation(str(v)) if name != "canonical" else str(v) for k, v in table.items()}
    )


@cache
def canonical_vocabulary() -> RelationVocabulary:
    """The shipped vocabulary (read once)."""
    data = tomllib.loads(resources.files("membrane").joinpath("relations.toml").read_text("utf-8"))
    return RelationVocabulary(_table(data, "canonical"), _table(data, "synonyms"), _table(data, "inverses"))
