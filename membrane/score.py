"""Scoring extractions against the gold set: the gold and prediction file
formats, per-case matching, and micro-averaged metrics.

Matching (also in docs/design-notes.md, "Bench and promotion"):
- Entities are compared by key: the resolver's normalisation
  (``membrane.resolve.entity_key``), so case, spacing and the other
  differences the graph merges do not count as errors. Roles are not scored.
- Relationships are compared as (source key, relation, target key), the
  relation through ``schema.normalize_relation``; the relaxed score compares
  (source key, target key) and ignores the label. Direction always counts.
- Duplicates collapse: a prediction naming "Docker" twice scores once.
- A relationship whose endpoint is missing from the predicted entities adds
  that entity (schema.Extraction does), so it can count as a true or false
  positive entity.
- An invalid prediction (unparseable, schema violation, or missing) counts as
  an empty prediction for precision/recall/F1 and as invalid for the
  valid-JSON rates.
- Precision with nothing predicted, and recall with nothing to find, are 1.0;
  F1 is 0.0 when both precision and recall are 0.
- Each gold relationship a prediction misses is put in one class
  (``RelationshipMisses``): ``label`` (the ordered pair was predicted, under
  another relation name), ``reversed`` (only the pair the other way round was
  predicted), ``endpoint`` (a source or target entity is missing from the
  prediction), ``unlinked`` (both entities were predicted but not linked in
  either direction). The classes say where a model loses relationship recall
  without anyone reading the cases one by one.

Prediction file (``membrane score GOLD PRED``): JSONL, one object per case:
``{"id": ..., "raw": "<model output>"}`` or ``{"id": ..., "extraction":
{"entities": [...], "relationships": [...]}}``, optionally
``"first_attempt_valid": bool`` (default: whether this prediction is valid)
and ``"seconds": float`` (latency, used for p50/p95).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from membrane.errors import ConfigError
from membrane.files import JsonlLineError, read_jsonl
from membrane.resolve import entity_key
from membrane.schema import UNBOUNDED_RULES, Extraction, ExtractionRules, normalize_relation

__all__ = [
    "METRICS",
    "CaseScore",
    "Counts",
    "GoldCase",
    "Prediction",
    "RelationshipMisses",
    "Scores",
    "load_gold",
    "load_predictions",
    "prediction_from_record",
    "score_case",
    "score_predictions",
]

# Metric names usable in bench.floors and bench.weights.
METRICS = (
    "valid_json",
    "first_attempt_valid_json",
    "entity_precision",
    "entity_recall",
    "entity_f1",
    "relationship_precision",
    "relationship_recall",
    "relationship_f1",
    "relaxed_relationship_precision",
    "relaxed_relationship_recall",
    "relaxed_relationship_f1",
)


@dataclass(frozen=True)
class Counts:
    """True positives, false positives and false negatives of one comparison."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    @classmethod
    def compare(cls, gold: set[Any], predicted: set[Any]) -> Counts:
        hits = len(gold & predicted)
        return cls(tp=hits, fp=len(predicted) - hits, fn=len(gold) - hits)

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_list(self) -> list[int]:
        return [self.tp, self.fp, self.fn]


@dataclass(frozen=True)
class RelationshipMisses:
    """Gold relationships a prediction missed, by why (see the module docstring)."""

    label: int = 0
    reversed: int = 0
    endpoint: int = 0
    unlinked: int = 0

    def __add__(self, other: RelationshipMisses) -> RelationshipMisses:
        return RelationshipMisses(
            self.label + other.label,
            self.reversed + other.reversed,
            self.endpoint + other.endpoint,
            self.unlinked + other.unlinked,
        )

    def as_list(self) -> list[int]:
        return [self.label, self.reversed, self.endpoint, self.unlinked]


@dataclass(frozen=True)
class GoldCase:
    id: str
    text: str
    extraction: Extraction
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prediction:
    """One model answer for one case; `extraction` is None when it was invalid."""

    id: str
    extraction: Extraction | None
    first_attempt_valid: bool
    error: str = ""
    seconds: float | None = None

    @property
    def valid(self) -> bool:
        return self.extraction is not None


def _from_list(cls: type[Any]) -> Callable[[Any], Any]:
    """A validator reading a stored list of ints as `cls(*values)`; other input goes on unchanged."""
    return lambda value: cls(*value) if isinstance(value, (list, tuple)) else value


# Reports store counts as [tp, fp, fn] lists (the format since bench reports exist).
StoredCounts = Annotated[Counts, BeforeValidator(_from_list(Counts)), PlainSerializer(Counts.as_list)]
# [label, reversed, endpoint, unlinked]; absent (None) in reports older than the breakdown.
StoredMisses = Annotated[
    RelationshipMisses, BeforeValidator(_from_list(RelationshipMisses)), PlainSerializer(RelationshipMisses.as_list)
]

# Stored reports also carry derived keys (a score set's "metrics"): ignored on load, recomputed.
_STORED = ConfigDict(frozen=True, extra="ignore")


class CaseScore(BaseModel):
    """How one prediction compares with one gold case."""

    model_config = _STORED

    id: str
    valid: bool
    first_attempt_valid: bool
    entities: StoredCounts
    relationships: StoredCounts
    relaxed: StoredCounts
    missing_entities: tuple[str, ...] = ()
    spurious_entities: tuple[str, ...] = ()
    missing_relationships: tuple[str, ...] = ()
    spurious_relationships: tuple[str, ...] = ()
    relationship_misses: StoredMisses | None = None
    error: str = ""
    seconds: float | None = None

    @model_serializer(mode="wrap")
    def _without_unknown_misses(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Old reports have no breakdown; leaving the key out keeps them byte-for-byte on a round trip.
        data: dict[str, Any] = handler(self)
        if data.get("relationship_misses") is None:
            data.pop("relationship_misses", None)
        return data


class Scores(BaseModel):
    """One model's scores over a gold set: per-case details and micro averages."""

    model_config = _STORED

    cases: tuple[CaseScore, ...] = ()

    def _total(self, attribute: str) -> Counts:
        total = Counts()
        for case in self.cases:
            total = total + getattr(case, attribute)
        return total

    @property
    def entity(self) -> Counts:
        return self._total("entities")

    @property
    def relationship(self) -> Counts:
        return self._total("relationships")

    @property
    def relaxed(self) -> Counts:
        return self._total("relaxed")

    @property
    def relationship_misses(self) -> RelationshipMisses | None:
        """The misses by class over every case; None when a case was scored before the breakdown."""
        total = RelationshipMisses()
        for case in self.cases:
            if case.relationship_misses is None:
                return None
            total = total + case.relationship_misses
        return total

    def metrics(self) -> dict[str, float]:
        """Every name in METRICS with its micro-averaged value (rates in 0..1)."""
        n = len(self.cases) or 1
        values = {
            "valid_json": sum(c.valid for c in self.cases) / n,
            "first_attempt_valid_json": sum(c.first_attempt_valid for c in self.cases) / n,
        }
        for prefix, counts in (
            ("entity", self.entity),
            ("relationship", self.relationship),
            ("relaxed_relationship", self.relaxed),
        ):
            values[f"{prefix}_precision"] = counts.precision
            values[f"{prefix}_recall"] = counts.recall
            values[f"{prefix}_f1"] = counts.f1
        return values

    @model_serializer(mode="wrap")
    def _with_metrics(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The averages go into reports too, so a report file is readable without this code.
        return {"metrics": self.metrics(), **handler(self)}


# ---------------------------------------------------------------- files


def _read_jsonl(path: Path, what: str) -> Iterable[tuple[int, dict[str, Any]]]:
    try:
        for number, record in read_jsonl(path):
            if not isinstance(record, dict) or "id" not in record:
                raise ConfigError(f'{what} file {str(path)!r} line {number}: expected an object with an "id"')
            yield number, record
    except OSError as exc:
        raise ConfigError(f"{what} file {str(path)!r}: cannot read it ({exc.strerror})") from exc
    except JsonlLineError as exc:
        raise ConfigError(f"{what} file {str(path)!r} line {exc.number}: not JSON ({exc.error.msg})") from None


def load_gold(path: Path, rules: ExtractionRules | None = None) -> list[GoldCase]:
    """The gold cases of a JSONL file; raises ConfigError naming the bad line.

    `rules` fold the labels' relation types the way model answers are folded, so
    both are compared in the graph's vocabulary (ExtractionRules.for_labels: no
    count limits, and a closed vocabulary never rejects a label).
    """
    labels = rules.for_labels() if rules else UNBOUNDED_RULES
    cases: list[GoldCase] = []
    seen: set[str] = set()
    for number, record in _read_jsonl(path, "gold"):
        case_id = str(record["id"])
        if case_id in seen:
            raise ConfigError(f"gold file {str(path)!r} line {number}: duplicate id {case_id!r}")
        seen.add(case_id)
        try:
            extraction = Extraction.parse(
                {"entities": record.get("entities", []), "relationships": record.get("relationships", [])},
                labels,
            )
        except ValidationError as exc:
            raise ConfigError(f"gold file {str(path)!r} line {number} ({case_id}): {exc}") from None
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f'gold file {str(path)!r} line {number} ({case_id}): "text" is missing or empty')
        cases.append(GoldCase(case_id, text, extraction, tuple(record.get("tags", ()))))
    if not cases:
        raise ConfigError(f"gold file {str(path)!r} holds no cases")
    return cases


def prediction_from_record(record: Mapping[str, Any], rules: ExtractionRules | None = None) -> Prediction:
    """A Prediction from one line of a prediction file (see the module docstring)."""
    from membrane.extract import InvalidOutput, parse_output

    rules = rules or UNBOUNDED_RULES
    case_id = str(record["id"])
    extraction: Extraction | None = None
    error = ""
    if "extraction" in record:
        try:
            extraction = Extraction.parse(record["extraction"], rules)
        except ValidationError as exc:
            error = f"does not match the schema: {exc.error_count()} error(s)"
    elif "raw" in record:
        try:
            extraction = parse_output(str(record["raw"]), rules)
        except InvalidOutput as exc:
            error = str(exc)
    else:
        error = 'neither "raw" nor "extraction" given'
    first = bool(record.get("first_attempt_valid", extraction is not None)) and extraction is not None
    seconds = record.get("seconds")
    return Prediction(case_id, extraction, first, error, float(seconds) if seconds is not None else None)


def load_predictions(path: Path, rules: ExtractionRules | None = None) -> dict[str, Prediction]:
    predictions: dict[str, Prediction] = {}
    for number, record in _read_jsonl(path, "prediction"):
        prediction = prediction_from_record(record, rules)
        if prediction.id in predictions:
            raise ConfigError(f"prediction file {str(path)!r} line {number}: duplicate id {prediction.id!r}")
        predictions[prediction.id] = prediction
    return predictions


# ---------------------------------------------------------------- matching


def _entity_keys(extraction: Extraction) -> dict[str, str]:
    return {entity_key(e.name): e.name for e in extraction.entities}


def _relationship_keys(extraction: Extraction) -> dict[tuple[str, str, str], str]:
    keys: dict[tuple[str, str, str], str] = {}
    for rel in extraction.relationships:
        key = (entity_key(rel.source), normalize_relation(rel.relation), entity_key(rel.target))
        keys.setdefault(key, f"({rel.source}, {key[1]}, {rel.target})")
    return keys


def _misses(
    gold: set[tuple[str, str, str]], predicted: set[tuple[str, str, str]], predicted_entities: set[str]
) -> RelationshipMisses:
    pairs = {(s, t) for s, _, t in predicted}
    label = reversed_ = endpoint = unlinked = 0
    for source, _, target in gold - predicted:
        if (source, target) in pairs:
            label += 1
        elif (target, source) in pairs:
            reversed_ += 1
        elif source not in predicted_entities or target not in predicted_entities:
            endpoint += 1
        else:
            unlinked += 1
    return RelationshipMisses(label, reversed_, endpoint, unlinked)


def score_case(gold: GoldCase, prediction: Prediction | None) -> CaseScore:
    """Compare one prediction (None: missing) with its gold case."""
    predicted = prediction.extraction if prediction and prediction.extraction else Extraction()
    gold_entities, pred_entities = _entity_keys(gold.extraction), _entity_keys(predicted)
    gold_rels, pred_rels = _relationship_keys(gold.extraction), _relationship_keys(predicted)
    gold_relaxed = {(s, t) for s, _, t in gold_rels}
    pred_relaxed = {(s, t) for s, _, t in pred_rels}
    return CaseScore(
        id=gold.id,
        valid=bool(prediction and prediction.valid),
        first_attempt_valid=bool(prediction and prediction.valid and prediction.first_attempt_valid),
        entities=Counts.compare(set(gold_entities), set(pred_entities)),
        relationships=Counts.compare(set(gold_rels), set(pred_rels)),
        relaxed=Counts.compare(gold_relaxed, pred_relaxed),
        missing_entities=tuple(gold_entities[k] for k in gold_entities if k not in pred_entities),
        spurious_entities=tuple(pred_entities[k] for k in pred_entities if k not in gold_entities),
        missing_relationships=tuple(gold_rels[k] for k in gold_rels if k not in pred_rels),
        spurious_relationships=tuple(pred_rels[k] for k in pred_rels if k not in gold_rels),
        relationship_misses=_misses(set(gold_rels), set(pred_rels), set(pred_entities)),
        error=prediction.error if prediction else "no prediction for this case",
        seconds=prediction.seconds if prediction else None,
    )


def score_predictions(gold: Iterable[GoldCase], predictions: Mapping[str, Prediction]) -> Scores:
    """Scores over every gold case; a case without a prediction counts as invalid and empty."""
    return Scores(cases=tuple(score_case(case, predictions.get(case.id)) for case in gold))
