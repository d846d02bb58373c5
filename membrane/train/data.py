"""Training cases: hand-labelled files, distillation from the journal, the
gold-set overlap check, the seeded validation split and the data hash.

A case is one note and its labelled Extraction, in the gold set's JSONL format
(id, text, entities, relationships, tags). Labelled files are read as written;
every case must validate as an Extraction. Distilled cases are the journal's
latest extractions made by the named models, kept only when every entity is
grounded in the note (so a teacher's invented names never become labels).
Nothing that equals or nears a gold text (rapidfuzz ratio >= 85) may train.
`train.repeat` shows the training cases of chosen files more than once an epoch,
after the validation split, so a held-out case never trains.
"""

from __future__ import annotations

import glob
import hashlib
import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError
from rapidfuzz import fuzz, process

from membrane.errors import ConfigError
from membrane.files import JsonlLineError, read_jsonl
from membrane.schema import UNBOUNDED_RULES, Extraction, ExtractionRules

if TYPE_CHECKING:
    from membrane.journal import Journal

__all__ = [
    "GOLD_NEAR_RATIO",
    "Case",
    "data_sha256",
    "distilled_cases",
    "gold_overlaps",
    "labelled_cases",
    "load_jsonl_cases",
    "repeat_counts",
    "repeated",
    "split_cases",
]

GOLD_NEAR_RATIO = 85.0
T = TypeVar("T")


@dataclass(frozen=True)
class Case:
    """One training example: a note and the extraction the model should answer."""

    id: str
    text: str
    extraction: Extraction
    source: str  # the file it came from, or "distill:<backend>:<model>"

    def answer(self, *, compact: bool = False) -> str:
        """The extraction as minified JSON, objects or the compact shape: the exact training target."""
        data = self.extraction.compact() if compact else self.extraction.model_dump(mode="json")
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _case(row: dict[str, Any], source: str, line: int, rules: ExtractionRules) -> Case:
    try:
        extraction = Extraction.parse(
            {"entities": row.get("entities", []), "relationships": row.get("relationships", [])}, rules
        )
        return Case(id=str(row["id"]), text=str(row["text"]), extraction=extraction, source=source)
    except (KeyError, ValidationError) as exc:
        raise ConfigError(f"{source}:{line}: not a valid case ({exc})", key="train.data") from None


def load_jsonl_cases(path: Path, rules: ExtractionRules = UNBOUNDED_RULES) -> list[Case]:
    """Every case of one JSONL file; a bad line is a ConfigError naming file and line.

    `rules` (count limits ignored) fold the labels' relation types into the
    vocabulary the model should answer in, as the bench folds the gold labels.
    """
    labels = rules.for_labels()
    try:
        return [_case(row, str(path), number, labels) for number, row in read_jsonl(path)]
    except JsonlLineError as exc:
        raise ConfigError(f"{path}:{exc.number}: not JSON ({exc.error.msg})", key="train.data") from None


def matching_files(patterns: Iterable[str]) -> list[Path]:
    """The files the globs `patterns` name (~ expanded), sorted, each once."""
    return sorted({Path(p) for pattern in patterns for p in glob.glob(str(Path(pattern).expanduser()))})


def labelled_cases(patterns: Sequence[str], rules: ExtractionRules = UNBOUNDED_RULES) -> list[Case]:
    """The cases of every file matching `patterns`, files in sorted order, labels folded by `rules`."""
    return [case for path in matching_files(patterns) for case in load_jsonl_cases(path, rules)]


def _grounded(extraction: Extraction, text: str, threshold: float) -> bool:
    from membrane.extract import ground

    _, dropped = ground(extraction, text, threshold)
    return not dropped


def distilled_cases(journal: Journal, models: Iterable[str], *, threshold: float = 90.0) -> list[Case]:
    """The journal's latest valid, grounded extractions by `models` ("backend:name") as cases."""
    wanted = set(models)
    cases = []
    for capture, stored in journal.extractions.facts():
        ref = f"{stored.result.backend}:{stored.result.model}"
        if ref not in wanted:
            continue
        extraction = stored.result.extraction  # parsed by the journal, under UNBOUNDED_RULES
        if not extraction.entities or not _grounded(extraction, capture.text, max(threshold, 1.0)):
            continue
        cases.append(
            Case(id=f"distill-{capture.sha256[:12]}", text=capture.text, extraction=extraction, source=f"distill:{ref}")
        )
    return cases


def gold_overlaps(cases: Sequence[Case], gold_texts: Sequence[str], ratio: float = GOLD_NEAR_RATIO) -> list[str]:
    """Ids of cases whose text equals or nears (rapidfuzz ratio >= `ratio`) a gold text."""
    golds = [" ".join(t.split()) for t in gold_texts]
    hits = []
    for case in cases:
        text = " ".join(case.text.split())
        if text in golds or process.extractOne(text, golds, scorer=fuzz.ratio, score_cutoff=ratio):
            hits.append(case.id)
    return hits


def split_cases(cases: Sequence[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """A seeded (train, validation) split; at least one validation case when any are asked for."""
    order = list(cases)
    random.Random(seed).shuffle(order)
    n_val = round(len(order) * val_fraction)
    if val_fraction > 0 and len(order) > 1:
        n_val = max(1, n_val)
    return order[n_val:], order[:n_val]


def repeat_counts(cases: Sequence[Case], repeats: Mapping[str, int]) -> list[int]:
    """How many times an epoch each of `cases` trains: the count of the glob in `repeats` its file
    matches (the most, if several match), else 1."""
    times: dict[str, int] = {}
    for pattern, count in repeats.items():
        for path in matching_files([pattern]):  # the very paths labelled_cases names as sources
            times[str(path)] = max(times.get(str(path), 1), count)
    return [times.get(case.source, 1) for case in cases]


def repeated(items: Sequence[T], counts: Sequence[int]) -> list[T]:
    """Each of `items` `counts` times, copies side by side (the loop shuffles)."""
    return [item for item, count in zip(items, counts, strict=True) for _ in range(count)]


def data_sha256(cases: Sequence[Case]) -> str:
    """A hash of exactly what trains: each case's text and answer, in order."""
    digest = hashlib.sha256()
    for case in cases:
        digest.update(case.text.encode("utf-8") + b"\0" + case.answer().encode("utf-8") + b"\n")
    return digest.hexdigest()
