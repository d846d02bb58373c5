"""The hand-labelled training data under config/train/: valid labels, and no overlap with either evaluation set."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rapidfuzz import fuzz, process, utils

from membrane.files import read_jsonl
from membrane.schema import RELATION_PATTERN, Extraction
from membrane.score import load_gold

ROOT = Path(__file__).resolve().parents[1]
TRAIN_DIR = ROOT / "config" / "train"
EVAL_FILES = (ROOT / "config" / "eval" / "gold.jsonl", ROOT / "config" / "eval" / "real.jsonl")
NEAR_GOLD = 85  # rapidfuzz.fuzz.ratio at or above this counts as a copy of an evaluation text
FIELDS = {"id", "text", "entities", "relationships", "tags"}
# A real passage written by others also names where it came from and under which licence.
REAL_FIELDS = FIELDS | {"source", "licence"}
TAGS = {
    "plain",
    "several-facts",
    "coreference",
    "list",
    "negation",
    "uncertain",
    "passive",
    "punctuation",
    "version",
    "unicode",
    "people",
    "org",
    "personal",
    "infra",
    "general",
    "long",
    "entities-only",
    "near-duplicates",
    "reference-example",
    "short",
    "medium",
    "real",
    "written",
}


@dataclass(frozen=True)
class Case:
    where: str  # "cases-a.jsonl:12 (ta0012)", for failure messages
    record: dict[str, Any]


def _load_cases() -> list[Case]:
    cases: list[Case] = []
    for path in sorted(TRAIN_DIR.rglob("*.jsonl")):
        for number, record in read_jsonl(path):
            where = path.relative_to(TRAIN_DIR)
            cases.append(Case(f"{where}:{number} ({record.get('id')})", record))
    return cases


CASES = _load_cases()


def test_training_files_hold_cases() -> None:
    """config/train holds at least one JSONL file with at least 300 cases in all."""
    assert len(CASES) >= 300, f"only {len(CASES)} training cases"


def _problems(check: Callable[[Case], list[str]]) -> list[str]:
    return [f"{case.where}: {problem}" for case in CASES for problem in check(case)]


def _validation_problems(case: Case) -> list[str]:
    record = case.record
    if set(record) not in (FIELDS, REAL_FIELDS):
        return [f"fields {sorted(record)}"]
    if not isinstance(record["text"], str) or not record["text"].strip():
        return ["empty text"]
    try:
        parsed = Extraction.parse({"entities": record["entities"], "relationships": record["relationships"]})
    except ValidationError as exc:
        return [str(exc)]
    # Validation silently removes duplicates and self-loops and normalises names;
    # a training label must already be in that final form.
    problems = []
    if [e.model_dump() for e in parsed.entities] != record["entities"]:
        problems.append("entities change under validation (duplicate, untrimmed, or a missing endpoint)")
    if [r.model_dump() for r in parsed.relationships] != record["relationships"]:
        problems.append("relationships change under validation (duplicate, self-loop, or relation not normalised)")
    return problems


def _grounding_problems(case: Case) -> list[str]:
    record = case.record
    text = record["text"].casefold()
    names = [e["name"] for e in record["entities"]]
    problems = [f"name not in the text: {n!r}" for n in names if n.casefold() not in text]
    for rel in record["relationships"]:
        if not RELATION_PATTERN.fullmatch(rel["relation"]):
            problems.append(f"relation not UPPER_SNAKE_CASE: {rel['relation']!r}")
        if rel["source"] not in names or rel["target"] not in names:
            problems.append(f"endpoint not a listed entity: {rel}")
    return problems


def _rule_problems(case: Case) -> list[str]:
    record = case.record
    sources = {r["source"] for r in record["relationships"]}
    targets = {r["target"] for r in record["relationships"]}
    problems = []
    for entity in record["entities"]:
        expected = "object" if entity["name"] in targets and entity["name"] not in sources else "subject"
        if entity["role"] != expected:
            problems.append(f"role of {entity['name']!r} should be {expected}")
    if not record["tags"] or not set(record["tags"]) <= TAGS:
        problems.append(f"tags {record['tags']} not all from LABELLING.md")
    if ("entities-only" in record["tags"]) != (not record["relationships"]):
        problems.append("tag entities-only must be set exactly when there is no relationship")
    return problems


def test_every_case_validates_as_an_extraction_unchanged() -> None:
    """Every case has exactly the five fields and its labels validate as an Extraction with nothing dropped or
    renamed."""
    problems = _problems(_validation_problems)
    assert not problems, "\n".join(problems)


def test_every_name_is_grounded_and_every_endpoint_listed() -> None:
    """Every entity name occurs in its text, every endpoint is a listed entity, every relation is UPPER_SNAKE_CASE."""
    problems = _problems(_grounding_problems)
    assert not problems, "\n".join(problems)


def test_roles_and_tags_follow_the_labelling_rules() -> None:
    """An entity is an object exactly when it is only ever a target, and every tag is one LABELLING.md defines."""
    problems = _problems(_rule_problems)
    assert not problems, "\n".join(problems)


def test_training_ids_are_unique() -> None:
    """No id is used by two training cases, across all the files."""
    counts = Counter(c.record["id"] for c in CASES)
    assert not [i for i, n in counts.items() if n > 1]


def test_no_two_training_cases_share_a_text() -> None:
    """No training text appears twice (after trimming and case-folding)."""
    counts = Counter(c.record["text"].strip().casefold() for c in CASES)
    dupes = [c.where for c in CASES if counts[c.record["text"].strip().casefold()] > 1]
    assert not dupes, f"duplicate texts: {dupes}"


def test_no_training_text_equals_or_is_near_an_evaluation_text() -> None:
    """No training text scores rapidfuzz ratio >= 85 against any text of the gold or the real-text set
    (the message names only case ids and scores)."""
    gold = [g.text for path in EVAL_FILES for g in load_gold(path)]
    assert len(gold) >= 270, "both evaluation sets are checked"
    train = [c.record["text"] for c in CASES]
    # Case and punctuation folded first, so a copy with changed capitalisation still counts.
    scores = process.cdist(
        train, gold, scorer=fuzz.ratio, processor=utils.default_process, score_cutoff=NEAR_GOLD, workers=1
    )
    near = [f"{CASES[i].where}: {scores[i].max():.0f}" for i in range(len(train)) if scores[i].max() >= NEAR_GOLD]
    # Never print an evaluation text: the held-out sets must not leak into logs or into the next labeller's head.
    assert not near, f"training cases near an evaluation text: {near}"
