"""The data MemBrane extracts: Entity, Relationship, Extraction, and the JSON
schema sent to models; and ModelRef, the name of the model that extracts it.

Decisions (also in docs/design-notes.md):
- Names are trimmed at both ends only; inner newlines, quotes and any script
  are kept verbatim. Empty names, names over 200 characters and names holding
  a lone surrogate (a JSON escape such as \\ud800, not text) are invalid.
- A relation is normalised to UPPER_SNAKE_CASE ASCII (``deployed on`` ->
  ``DEPLOYED_ON``) and must then match RELATION_PATTERN; this alphabet is what
  makes a relationship type safe to use in Cypher.
- A relationship whose endpoint is not among the entities *adds* that entity
  (role subject for a source, object for a target): the model asserted a fact
  about it, and dropping the fact loses more than it protects.
- Duplicates (same name case-insensitively; same triple) are removed, first
  occurrence wins; a self-loop (source == target) is dropped.
- Synonyms map to canonical names and inverse forms are turned around
  ((A, FOUNDED_BY, B) -> (B, FOUNDED, A)); the shipped maps are
  membrane/relations.toml. With a relation vocabulary configured, any other
  relation is a validation error (which triggers repair).
- The compact answer (what models tuned on extract-t2 write) is the same
  content in fewer tokens: entities as a list of names, relationships as
  [source, RELATION, target] lists. Roles are derived from the relationships
  by LABELLING.md's rule (subject when the source of one or of none, object
  when only ever a target). Extraction accepts either shape.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from membrane.errors import MembraneError

__all__ = [
    "MAX_NAME_LENGTH",
    "MAX_RELATION_LENGTH",
    "RELATION_PATTERN",
    "UNBOUNDED_RULES",
    "Entity",
    "Extraction",
    "ExtractionRules",
    "ModelRef",
    "Relationship",
    "compact_json_schema",
    "extraction_json_schema",
    "is_relation_type",
    "normalize_relation",
    "relation_pattern",
]

MAX_NAME_LENGTH = 200
MAX_RELATION_LENGTH = 64


def relation_pattern(max_length: int = MAX_RELATION_LENGTH) -> str:
    """The relationship-type alphabet as a regular expression: an ASCII capital,
    then capitals, digits and underscores, `max_length` characters at most.
    The one definition of the alphabet (the models' JSON schema asks for a
    shorter form of it)."""
    return f"^[A-Z][A-Z0-9_]{{0,{max_length - 1}}}$"


RELATION_PATTERN = re.compile(relation_pattern())


def is_relation_type(value: object) -> bool:
    """Whether `value` is a relationship type in the alphabet: the one check
    every type passes before it is placed in Cypher or stored."""
    return isinstance(value, str) and RELATION_PATTERN.fullmatch(value) is not None


Role = Literal["subject", "object"]


@dataclass(frozen=True)
class ExtractionRules:
    """Limits and vocabulary applied while validating and in the model's schema."""

    max_entities: int = 24
    max_relationships: int = 24
    # Canonical relation types; empty means any type in the alphabet.
    relation_vocabulary: tuple[str, ...] = ()
    # Synonym (any spelling) -> canonical type.
    relation_synonyms: Mapping[str, str] = field(default_factory=dict)
    # Inverse form -> canonical type, turned around: (A, FOUNDED_BY, B) -> (B, FOUNDED, A).
    relation_inverses: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalised once here, not for every relationship validated.
        for name in ("relation_synonyms", "relation_inverses"):
            mapping = {normalize_relation(k): normalize_relation(v) for k, v in getattr(self, name).items()}
            object.__setattr__(self, name, mapping)

    def unbounded(self) -> ExtractionRules:
        """The same vocabulary without count limits (for merged chunks)."""
        return replace(self, max_entities=UNBOUNDED, max_relationships=UNBOUNDED)

    def for_labels(self) -> ExtractionRules:
        """For labelled sets: relation types folded the same way, with no count limits and no closed
        vocabulary. A label is the truth: one outside the decoding vocabulary stays, a fact such a
        model cannot state (a miss), not an error."""
        return replace(self.unbounded(), relation_vocabulary=())

    def turned_around(self, relation: str) -> str | None:
        """The canonical type `relation` is the inverse form of, or None."""
        try:
            return self.relation_inverses.get(normalize_relation(relation))
        except ValueError:
            return None

    def canonical_relation(self, relation: str) -> str:
        normalized = normalize_relation(relation)
        normalized = self.relation_synonyms.get(normalized, normalized)
        if self.relation_vocabulary and normalized not in self.relation_vocabulary:
            allowed = ", ".join(self.relation_vocabulary)
            raise ValueError(f"relation {relation!r} is not in the vocabulary ({allowed})")
        return normalized


# No count limits: for merging chunk results and re-reading stored or scored
# extractions, which were held to the limits of their day when they were made.
UNBOUNDED = 10**9
UNBOUNDED_RULES = ExtractionRules(max_entities=UNBOUNDED, max_relationships=UNBOUNDED)


def normalize_relation(raw: str) -> str:
    """``'deployed on'`` -> ``'DEPLOYED_ON'``; raises ValueError if nothing valid remains."""
    ascii_text = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    # camelCase -> camel_Case before upper-casing, so "deployedOn" -> DEPLOYED_ON
    ascii_text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", ascii_text)
    snake = re.sub(r"[^A-Za-z0-9]+", "_", ascii_text).strip("_").upper()
    snake = snake[:MAX_RELATION_LENGTH].rstrip("_")
    if not is_relation_type(snake):
        raise ValueError(f"relation {raw!r} does not normalise to UPPER_SNAKE_CASE starting with a letter")
    return snake


_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean_name(value: str) -> str:
    name = value.strip()
    if not name:
        raise ValueError("name is empty")
    if _SURROGATE.search(name):  # from a JSON escape like "\ud800": no UTF-8 store accepts it
        raise ValueError("name holds an escaped lone surrogate, which is not text")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"name is longer than {MAX_NAME_LENGTH} characters")
    return name


def _rules(info: ValidationInfo) -> ExtractionRules:
    context = info.context if isinstance(info.context, dict) else {}
    rules = context.get("rules")
    return rules if isinstance(rules, ExtractionRules) else ExtractionRules()


class Entity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    role: Role = "subject"

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        return _clean_name(value) if isinstance(value, str) else value

    @field_validator("role", mode="before")
    @classmethod
    def _role(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value


class Relationship(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    relation: str = Field(max_length=64)
    target: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)

    @model_validator(mode="before")
    @classmethod
    def _turn_around(cls, data: Any, info: ValidationInfo) -> Any:
        # An inverse form (A, FOUNDED_BY, B) is stored as (B, FOUNDED, A).
        if isinstance(data, dict) and isinstance(data.get("relation"), str):
            canonical = _rules(info).turned_around(data["relation"])
            if canonical is not None:
                return {**data, "source": data.get("target"), "relation": canonical, "target": data.get("source")}
        return data

    @field_validator("source", "target", mode="before")
    @classmethod
    def _endpoint(cls, value: Any) -> Any:
        return _clean_name(value) if isinstance(value, str) else value

    @field_validator("relation")
    @classmethod
    def _relation(cls, value: str, info: ValidationInfo) -> str:
        return _rules(info).canonical_relation(value)

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.source, self.relation, self.target)


def _compact_relationship(item: Any) -> Any:
    if isinstance(item, list) and len(item) == 3:
        return dict(zip(("source", "relation", "target"), item, strict=True))
    if isinstance(item, list):
        raise ValueError(f"a relationship is a [source, relation, target] list, got {len(item)} items")
    return item


class Extraction(BaseModel):
    """One capture's (or chunk's) entities and relationships, validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    entities: tuple[Entity, ...] = ()
    relationships: tuple[Relationship, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _from_compact(cls, data: Any) -> Any:
        # The compact answer: names for entities, [source, relation, target] lists for relationships.
        if not isinstance(data, dict):
            return data
        entities, relationships = data.get("entities"), data.get("relationships")
        if isinstance(relationships, list) and any(isinstance(r, list) for r in relationships):
            relationships = [_compact_relationship(r) for r in relationships]
        if isinstance(entities, list) and any(isinstance(e, str) for e in entities):
            ends = [r for r in relationships if isinstance(r, dict)] if isinstance(relationships, list) else []
            sources = {r.get("source") for r in ends if isinstance(r.get("source"), str)}
            targets = {r.get("target") for r in ends if isinstance(r.get("target"), str)}
            entities = [
                {"name": e, "role": "object" if e in targets and e not in sources else "subject"}
                if isinstance(e, str)
                else e
                for e in entities
            ]
        if entities is data.get("entities") and relationships is data.get("relationships"):
            return data
        return {**data, "entities": entities, "relationships": relationships}

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Extraction:
        rules = _rules(info)
        entities: dict[str, Entity] = {}
        for entity in self.entities:
            entities.setdefault(entity.name.casefold(), entity)
        relationships: dict[tuple[str, str, str], Relationship] = {}
        for rel in self.relationships:
            if rel.source.casefold() == rel.target.casefold():
                continue
            ends: tuple[tuple[str, Role], ...] = ((rel.source, "subject"), (rel.target, "object"))
            for name, role in ends:
                entities.setdefault(name.casefold(), Entity(name=name, role=role))
            key = (rel.source.casefold(), rel.relation, rel.target.casefold())
            relationships.setdefault(key, rel)
        if len(entities) > rules.max_entities:
            raise ValueError(f"more than {rules.max_entities} entities")
        if len(relationships) > rules.max_relationships:
            raise ValueError(f"more than {rules.max_relationships} relationships")
        object.__setattr__(self, "entities", tuple(entities.values()))
        object.__setattr__(self, "relationships", tuple(relationships.values()))
        return self

    @classmethod
    def parse(cls, data: Any, rules: ExtractionRules | None = None) -> Extraction:
        """Validate decoded JSON under `rules`; raises pydantic.ValidationError."""
        return cls.model_validate(data, context={"rules": rules or ExtractionRules()})

    @classmethod
    def parse_json(cls, text: str, rules: ExtractionRules | None = None) -> Extraction:
        return cls.model_validate_json(text, context={"rules": rules or ExtractionRules()})

    def compact(self) -> dict[str, Any]:
        """The compact answer of this extraction: entity names, relationships as lists."""
        return {
            "entities": [e.name for e in self.entities],
            "relationships": [[r.source, r.relation, r.target] for r in self.relationships],
        }

    def merged_with(self, other: Extraction, rules: ExtractionRules | None = None) -> Extraction:
        """Union of two extractions (chunk results), deduplicated, limits not applied."""
        del rules
        return Extraction.parse(
            {
                "entities": [e.model_dump() for e in (*self.entities, *other.entities)],
                "relationships": [r.model_dump() for r in (*self.relationships, *other.relationships)],
            },
            UNBOUNDED_RULES,
        )


def extraction_json_schema(rules: ExtractionRules | None = None) -> dict[str, Any]:
    """The JSON schema sent to models (Ollama ``format=``, llama.cpp response_format).

    Generated from the pydantic models, then made friendly to grammar-constrained
    decoding: flat (no $ref), no titles, every array bounded by maxItems, both
    arrays and every field required, and the relation an enum when a vocabulary
    is configured. Bounded arrays and strings make constrained decoding terminate.
    """
    rules = rules or ExtractionRules()
    schema = Extraction.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items() if k not in ("title", "default", "description")}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    flat: dict[str, Any] = inline(schema)
    props = flat["properties"]
    props["entities"]["maxItems"] = rules.max_entities
    props["relationships"]["maxItems"] = rules.max_relationships
    for array in (props["entities"], props["relationships"]):
        item = array["items"]
        item["required"] = list(item["properties"])
        item["additionalProperties"] = False
    if rules.relation_vocabulary:
        props["relationships"]["items"]["properties"]["relation"] = {
            "type": "string",
            "enum": list(rules.relation_vocabulary),
        }
    flat["required"] = ["entities", "relationships"]
    flat["additionalProperties"] = False
    return flat


def compact_json_schema(rules: ExtractionRules | None = None) -> dict[str, Any]:
    """The JSON schema of the compact answer, bounded like extraction_json_schema."""
    full = extraction_json_schema(rules)
    entity = full["properties"]["entities"]
    relationship = full["properties"]["relationships"]
    fields = relationship["items"]["properties"]
    return {
        "type": "object",
        "properties": {
            "entities": {
                "type": "array",
                "items": entity["items"]["properties"]["name"],
                "maxItems": entity["maxItems"],
            },
            "relationships": {
                "type": "array",
                "items": {
                    "type": "array",
                    "prefixItems": [fields["source"], fields["relation"], fields["target"]],
                    "items": False,
                    "minItems": 3,
                    "maxItems": 3,
                },
                "maxItems": relationship["maxItems"],
            },
        },
        "required": ["entities", "relationships"],
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class ModelRef:
    """A model as "backend:name"; the name may itself contain colons (Ollama tags)."""

    backend: str
    name: str

    def __str__(self) -> str:
        return f"{self.backend}:{self.name}"

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        """Split at the FIRST colon: "ollama:qwen2.5:1.5b" -> ("ollama", "qwen2.5:1.5b")."""
        backend, sep, name = text.strip().partition(":")
        if not sep or not backend or not name:
            raise MembraneError(
                f"model {text!r} is not of the form backend:name",
                hint='Write models as "backend:name", e.g. "ollama:qwen2.5:1.5b" or "embedded:smollm2-135m".',
            )
        return cls(backend, name)
