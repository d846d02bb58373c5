"""The gold set and the scorer: hand-computed cases, the prediction file format, `membrane score`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from membrane.cli import main
from membrane.errors import ConfigError
from membrane.schema import RELATION_PATTERN, Extraction
from membrane.score import (
    Counts,
    GoldCase,
    Prediction,
    RelationshipMisses,
    load_gold,
    load_predictions,
    prediction_from_record,
    score_case,
    score_predictions,
)

GOLD_FILE = Path(__file__).resolve().parents[1] / "config" / "eval" / "gold.jsonl"

REFERENCE = GoldCase(
    "ref",
    "Docker is deployed on the Kubernetes cluster managed by the DevOps team.",
    Extraction.parse(
        {
            "entities": [{"name": "Docker"}, {"name": "Kubernetes cluster"}, {"name": "DevOps team"}],
            "relationships": [
                {"source": "Docker", "relation": "DEPLOYED_ON", "target": "Kubernetes cluster"},
                {"source": "DevOps team", "relation": "MANAGES", "target": "Kubernetes cluster"},
            ],
        }
    ),
)


def predicted(entities: list[str], relationships: list[tuple[str, str, str]], **fields: Any) -> Prediction:
    record = {
        "id": "ref",
        "extraction": {
            "entities": [{"name": n} for n in entities],
            "relationships": [{"source": s, "relation": r, "target": t} for s, r, t in relationships],
        },
        **fields,
    }
    return prediction_from_record(record)


# ---------------------------------------------------------------- the gold set


def test_gold_set_has_at_least_60_valid_cases() -> None:
    """Every line of the shipped gold set validates as an Extraction; there are at least 60, ids unique."""
    cases = load_gold(GOLD_FILE)
    assert len(cases) >= 60
    assert len({c.id for c in cases}) == len(cases)
    raw = [json.loads(line) for line in GOLD_FILE.read_text(encoding="utf-8").splitlines()]
    for record in raw:
        assert set(record) == {"id", "text", "entities", "relationships", "tags"}
        Extraction.parse({"entities": record["entities"], "relationships": record["relationships"]})
        names = {e["name"] for e in record["entities"]}
        for rel in record["relationships"]:
            assert RELATION_PATTERN.match(rel["relation"]), rel
            assert {rel["source"], rel["target"]} <= names, (record["id"], rel)


def test_gold_set_covers_the_required_kinds_of_text() -> None:
    """The gold set has each required kind of text, several cases of each."""
    tags = [t for c in load_gold(GOLD_FILE) for t in c.tags]
    for tag in (
        "plain",
        "several-facts",
        "coreference",
        "list",
        "negation",
        "punctuation",
        "version",
        "people",
        "org",
        "personal",
        "infra",
        "long",
    ):
        assert tags.count(tag) >= 3 or (tag == "long" and tags.count(tag) >= 2), tag


def test_gold_set_holds_the_reference_example() -> None:
    """The Docker / Kubernetes cluster / DevOps team example is labelled exactly as the README states it."""
    case = next(c for c in load_gold(GOLD_FILE) if "reference-example" in c.tags)
    assert [e.name for e in case.extraction.entities] == ["Docker", "Kubernetes cluster", "DevOps team"]
    assert {r.triple for r in case.extraction.relationships} == {
        ("Docker", "DEPLOYED_ON", "Kubernetes cluster"),
        ("DevOps team", "MANAGES", "Kubernetes cluster"),
    }


def test_negated_facts_are_not_labelled() -> None:
    """Negation cases keep the negated entity but no relationship to it (LABELLING.md)."""
    case = next(c for c in load_gold(GOLD_FILE) if c.id == "g020")
    assert "Docker" in {e.name for e in case.extraction.entities}
    assert all("Docker" not in (r.source, r.target) for r in case.extraction.relationships)


# ---------------------------------------------------------------- matching


def test_perfect_prediction_scores_one() -> None:
    """A prediction equal to the gold gets precision, recall and F1 of 1."""
    score = score_case(
        REFERENCE,
        predicted(
            ["Docker", "Kubernetes cluster", "DevOps team"],
            [("Docker", "DEPLOYED_ON", "Kubernetes cluster"), ("DevOps team", "MANAGES", "Kubernetes cluster")],
        ),
    )
    assert (score.entities, score.relationships, score.relaxed) == (Counts(3, 0, 0), Counts(2, 0, 0), Counts(2, 0, 0))
    assert score.valid and score.first_attempt_valid


def test_case_whitespace_and_article_differences_match() -> None:
    """Names differing in case, spacing or a leading article, and relations in any spelling, still match."""
    score = score_case(
        REFERENCE,
        predicted(
            ["docker", "  the kubernetes   CLUSTER ", "Devops Team"],
            [("DOCKER", "deployed on", "Kubernetes  Cluster"), ("devops team", "manages", "the Kubernetes cluster")],
        ),
    )
    assert score.entities == Counts(3, 0, 0)
    assert score.relationships == Counts(2, 0, 0)


def test_duplicates_count_once() -> None:
    """A name or triple predicted several times is one prediction, not extra false positives."""
    score = score_case(
        REFERENCE,
        predicted(
            ["Docker", "docker", "Docker ", "Kubernetes cluster", "Kubernetes Cluster"],
            [("Docker", "DEPLOYED_ON", "Kubernetes cluster"), ("docker", "deployedOn", "kubernetes cluster")],
        ),
    )
    assert score.entities == Counts(tp=2, fp=0, fn=1)
    assert score.relationships == Counts(tp=1, fp=0, fn=1)
    assert score.missing_entities == ("DevOps team",)


def test_empty_prediction_has_zero_recall_and_perfect_precision() -> None:
    """A valid but empty answer finds nothing: recall 0, precision 1 (nothing wrong claimed), F1 0."""
    score = score_case(REFERENCE, predicted([], []))
    assert score.valid
    assert score.entities == Counts(0, 0, 3)
    assert (score.entities.precision, score.entities.recall, score.entities.f1) == (1.0, 0.0, 0.0)


def test_invalid_json_counts_as_empty_and_invalid() -> None:
    """Unparseable output is an empty prediction for F1 and invalid for both valid-JSON rates."""
    prediction = prediction_from_record(
        {"id": "ref", "raw": '{"entities": [{"name": "Docker"', "first_attempt_valid": True}
    )
    score = score_case(REFERENCE, prediction)
    assert not score.valid and not score.first_attempt_valid
    assert score.entities == Counts(0, 0, 3) and score.relationships == Counts(0, 0, 2)
    assert "not valid JSON" in score.error


def test_schema_violation_counts_as_invalid() -> None:
    """Valid JSON that is not an Extraction (a relation that normalises to nothing) is invalid."""
    prediction = prediction_from_record(
        {"id": "ref", "raw": '{"entities": [], "relationships": [{"source": "a", "relation": "!!", "target": "b"}]}'}
    )
    assert not prediction.valid and "schema" in prediction.error


def test_relationship_to_missing_entity_adds_the_entity() -> None:
    """A relationship whose endpoints are not listed adds them as entities (schema rule), so they score."""
    score = score_case(
        REFERENCE, predicted([], [("Docker", "DEPLOYED_ON", "Kubernetes cluster"), ("Docker", "USES", "Helm")])
    )
    assert score.entities == Counts(tp=2, fp=1, fn=1)
    assert score.spurious_entities == ("Helm",)
    assert score.relationships == Counts(tp=1, fp=1, fn=1)


def test_relaxed_score_ignores_label_but_not_direction() -> None:
    """A wrong relation label is a miss strictly and a hit relaxed; a reversed edge misses both."""
    score = score_case(
        REFERENCE,
        predicted(
            ["Docker", "Kubernetes cluster", "DevOps team"],
            [("Docker", "RUNS_ON", "Kubernetes cluster"), ("Kubernetes cluster", "MANAGES", "DevOps team")],
        ),
    )
    assert score.relationships == Counts(tp=0, fp=2, fn=2)
    assert score.relaxed == Counts(tp=1, fp=1, fn=1)


def test_micro_average_and_valid_json_rates_over_cases() -> None:
    """Metrics sum counts over all cases (micro); repaired answers are valid but not first-attempt valid."""
    other = GoldCase(
        "two",
        "Maria works at Siemens.",
        Extraction.parse({"relationships": [{"source": "Maria", "relation": "WORKS_AT", "target": "Siemens"}]}),
    )
    predictions = {
        # ref: 3 entities found of 3 plus 1 wrong; 1 of 2 relationships; repaired
        "ref": predicted(
            ["Docker", "Kubernetes cluster", "DevOps team", "Helm"],
            [("Docker", "DEPLOYED_ON", "Kubernetes cluster")],
            first_attempt_valid=False,
        ),
        # two: missing (no prediction at all)
    }
    scores = score_predictions([REFERENCE, other], predictions)
    metrics = scores.metrics()
    assert scores.entity == Counts(tp=3, fp=1, fn=2)  # Maria and Siemens missed
    assert metrics["entity_precision"] == pytest.approx(3 / 4)
    assert metrics["entity_recall"] == pytest.approx(3 / 5)
    assert metrics["entity_f1"] == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert scores.relationship == Counts(tp=1, fp=0, fn=2)
    assert metrics["relationship_f1"] == pytest.approx(2 * 1.0 * (1 / 3) / (4 / 3))
    assert metrics["valid_json"] == 0.5
    assert metrics["first_attempt_valid_json"] == 0.0
    assert scores.cases[1].error == "no prediction for this case"


def test_scores_round_trip_through_json() -> None:
    """Per-case scores survive a JSON dump and load (the journal stores them) with equal metrics,
    counts stored as [tp, fp, fn] and the averages written beside the cases."""
    scores = score_predictions([REFERENCE], {"ref": predicted(["Docker"], [])})
    stored = json.loads(json.dumps(scores.model_dump(mode="json")))
    assert stored["cases"][0]["entities"] == [1, 0, 2] and stored["metrics"] == scores.metrics()
    again = type(scores).model_validate(stored)
    assert again == scores and again.metrics() == scores.metrics()


def test_bad_gold_file_names_the_line(tmp_path: Path) -> None:
    """A gold line that is not an Extraction is a ConfigError naming the file line."""
    path = tmp_path / "gold.jsonl"
    path.write_text('{"id": "a", "text": "x", "entities": [{"name": ""}], "relationships": []}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="line 1"):
        load_gold(path)


def test_labels_fold_into_a_closed_vocabulary_and_stay_when_outside_it(tmp_path: Path) -> None:
    """Under relations = "enum" both evaluation sets load: a synonym folds, a type outside the
    vocabulary stays as labelled (a fact such a model cannot state), and the answer's rules still refuse it."""
    from membrane.config import Settings

    rules = Settings.model_validate({"extraction": {"relations": "enum"}}).extraction.rules()
    assert rules.relation_vocabulary and "UPGRADED_TO" not in rules.relation_vocabulary
    row = {
        "id": "a",
        "text": "Ana upgraded Ubuntu to Debian; Grafana requires Loki.",
        "entities": [{"name": n} for n in ("Ana", "Ubuntu", "Debian", "Grafana", "Loki")],
        "relationships": [
            {"source": "Ubuntu", "relation": "UPGRADED_TO", "target": "Debian"},
            {"source": "Grafana", "relation": "REQUIRES", "target": "Loki"},
        ],
    }
    path = tmp_path / "gold.jsonl"
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    (case,) = load_gold(path, rules)
    assert [r.relation for r in case.extraction.relationships] == ["UPGRADED_TO", "DEPENDS_ON"]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        Extraction.parse({"entities": row["entities"], "relationships": row["relationships"][:1]}, rules)
    for eval_file in Settings().bench.eval_files:
        assert load_gold(eval_file, rules)


# ---------------------------------------------------------------- membrane score


def _write_pred(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_score_command_prints_table_and_json(tmp_path: Path) -> None:
    """`membrane score GOLD PRED` prints the metrics table; --json gives metrics and per-case details."""
    gold = tmp_path / "gold.jsonl"
    gold.write_text(GOLD_FILE.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    pred = _write_pred(
        tmp_path / "pred.jsonl",
        [
            {
                "id": "g001",
                "raw": '```json\n{"entities": [{"name": "Docker", "role": "subject"}], "relationships": '
                '[{"source": "Docker", "relation": "deployed on", "target": "Kubernetes cluster"}]}\n```',
            }
        ],
    )
    runner = CliRunner()
    result = runner.invoke(main, ["score", str(gold), str(pred)])
    assert result.exit_code == 0, result.output
    assert "entity F1" in result.output and "0.800" in result.output  # entities: P 1, R 2/3
    result = runner.invoke(main, ["score", str(gold), str(pred), "--json"])
    data = json.loads(result.output)
    assert data["metrics"]["relationship_recall"] == 0.5
    assert data["cases"][0]["missing_relationships"] == ["(DevOps team, MANAGES, Kubernetes cluster)"]


def test_score_command_bad_prediction_file_exits_2(tmp_path: Path) -> None:
    """A prediction file that is not JSONL is a usage error (exit code 2) naming the line."""
    pred = tmp_path / "pred.jsonl"
    pred.write_text("not json\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["score", str(GOLD_FILE), str(pred)])
    assert result.exit_code == 2
    assert "line 1" in result.output


def test_load_predictions_rejects_duplicate_ids(tmp_path: Path) -> None:
    """Two predictions for one case are ambiguous: a ConfigError."""
    pred = _write_pred(tmp_path / "p.jsonl", [{"id": "a", "raw": "{}"}, {"id": "a", "raw": "{}"}])
    with pytest.raises(ConfigError, match="duplicate"):
        load_predictions(pred)


def test_missed_relationships_are_classed_by_why() -> None:
    """Each missed gold relationship is in one class: another label on the same ordered pair, the
    pair only reversed, an endpoint entity missing, or both entities found but not linked."""
    gold = GoldCase(
        "four",
        "",
        Extraction.parse(
            {
                "relationships": [
                    {"source": "Docker", "relation": "DEPLOYED_ON", "target": "Kubernetes cluster"},
                    {"source": "DevOps team", "relation": "MANAGES", "target": "Kubernetes cluster"},
                    {"source": "Grafana", "relation": "READS_FROM", "target": "Prometheus"},
                    {"source": "Anna", "relation": "LEADS", "target": "DevOps team"},
                    {"source": "Loki", "relation": "PART_OF", "target": "monitoring stack"},
                ]
            }
        ),
    )
    score = score_case(
        gold,
        predicted(
            ["Docker", "Kubernetes cluster", "DevOps team", "Grafana", "Prometheus", "Anna", "Loki"],
            [
                ("Docker", "RUNS_ON", "Kubernetes cluster"),
                ("Kubernetes cluster", "MANAGED_BY", "DevOps team"),
                ("Loki", "PART_OF", "monitoring stack"),
            ],
        ),
    )
    assert score.relationships == Counts(tp=1, fp=2, fn=4)
    assert score.relationship_misses == RelationshipMisses(label=1, reversed=1, endpoint=0, unlinked=2)
    one_entity = score_case(gold, predicted(["Docker"], []))
    assert one_entity.relationship_misses == RelationshipMisses(endpoint=5)
    total = score_predictions([gold, gold], {"four": predicted([], [])}).relationship_misses
    assert total == RelationshipMisses(endpoint=10)
    stored = json.loads(json.dumps(score.model_dump(mode="json")))
    assert stored["relationship_misses"] == [1, 1, 0, 2]
    assert type(score).model_validate(stored) == score
