"""The promotion policy: which model is champion, whether a challenger's scores
justify replacing it, and applying that decision to the journal.

Policy (also in docs/design-notes.md, "Bench and promotion"):
1. Gates: the challenger's valid-JSON rate after repair is at least
   bench.min_valid_json, and no metric named in bench.floors is under its floor.
2. Composite score = sum(weight * metric) over bench.weights (metrics from
   membrane.score.METRICS, micro-averaged over the cases).
3. Paired bootstrap over the cases both models were scored on: resample the
   case ids with replacement, recompute both models' micro metrics and the
   composite difference on the same resample; promote only when the lower
   (1 - bench.confidence) quantile of the difference is above zero. The
   resampling is seeded (BOOTSTRAP_SEED), so the same scores always give the
   same decision.
Otherwise the champion stays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from membrane.config import Settings
from membrane.errors import ConfigError
from membrane.journal import Journal
from membrane.logs import get_logger
from membrane.pipeline import active_model
from membrane.schema import ModelRef
from membrane.score import METRICS, Scores

__all__ = [
    "BOOTSTRAP_SEED",
    "Decision",
    "apply_decision",
    "bootstrap_improvement",
    "check_policy_settings",
    "composite",
    "decide",
    "gate_failures",
    "promote",
]

log = get_logger(__name__)

BOOTSTRAP_SEED = 0
_COUNT_FIELDS = {"entity": "entities", "relationship": "relationships", "relaxed_relationship": "relaxed"}


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one challenger against the champion, with its evidence."""

    promote: bool
    reason: str
    champion: str
    challenger: str
    champion_score: float | None = None
    challenger_score: float | None = None
    improvement: float | None = None
    lower_bound: float | None = None
    confidence: float = 0.95
    samples: int = 0
    cases: int = 0
    gates_failed: tuple[str, ...] = ()
    challenger_metrics: Mapping[str, float] | None = None
    champion_metrics: Mapping[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gates_failed"] = list(self.gates_failed)
        data["challenger_metrics"] = dict(self.challenger_metrics or {})
        data["champion_metrics"] = dict(self.champion_metrics or {})
        return data


def check_policy_settings(settings: Settings) -> None:
    """Raise ConfigError when bench.weights or bench.floors name an unknown metric."""
    for key, table in (("bench.weights", settings.bench.weights), ("bench.floors", settings.bench.floors)):
        unknown = sorted(set(table) - set(METRICS))
        if unknown:
            raise ConfigError(
                f"{key}: unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}", key=key
            )


def composite(metrics: Mapping[str, float], weights: Mapping[str, float]) -> float:
    return float(sum(weight * metrics[name] for name, weight in weights.items()))


def gate_failures(metrics: Mapping[str, float], settings: Settings) -> list[str]:
    """Human-readable reasons the gates refuse these metrics; empty when they pass."""
    bench = settings.bench
    failures = []
    if metrics["valid_json"] < bench.min_valid_json:
        failures.append(f"valid_json {metrics['valid_json']:.3f} < {bench.min_valid_json:.3f}")
    for name, floor in bench.floors.items():
        if metrics[name] < floor:
            failures.append(f"{name} {metrics[name]:.3f} < floor {floor:.3f}")
    return failures


# ---------------------------------------------------------------- bootstrap


def _ratio(numerator: npt.NDArray[np.float64], denominator: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    # Same convention as score.Counts: nothing to count is a perfect 1.0.
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 1.0)


def _resampled_metrics(scores: Scores, index: npt.NDArray[np.intp], names: set[str]) -> dict[str, Any]:
    """Micro metrics of `scores` for every resample (row) of case indices in `index`."""
    values: dict[str, Any] = {}
    n = index.shape[1]
    for flag, name in (("valid", "valid_json"), ("first_attempt_valid", "first_attempt_valid_json")):
        if name in names:
            column = np.array([getattr(c, flag) for c in scores.cases], dtype=float)
            values[name] = column[index].sum(axis=1) / n
    for prefix, field_name in _COUNT_FIELDS.items():
        if not any(name.startswith(prefix + "_") for name in names):
            continue
        counts = np.array([getattr(c, field_name).as_list() for c in scores.cases], dtype=float)
        tp, fp, fn = (counts[:, i][index].sum(axis=1) for i in range(3))
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        total = precision + recall
        values[f"{prefix}_precision"] = precision
        values[f"{prefix}_recall"] = recall
        values[f"{prefix}_f1"] = np.where(total > 0, 2 * precision * recall / np.where(total > 0, total, 1.0), 0.0)
    return values


def _aligned(champion: Scores, challenger: Scores) -> tuple[Scores, Scores]:
    """Both score sets restricted to the cases they share, in the same order (pairing)."""
    theirs = {c.id: c for c in champion.cases}
    shared = [c.id for c in challenger.cases if c.id in theirs]
    mine = {c.id: c for c in challenger.cases}
    return Scores(tuple(theirs[i] for i in shared)), Scores(tuple(mine[i] for i in shared))


def bootstrap_improvement(
    champion: Scores,
    challenger: Scores,
    weights: Mapping[str, float],
    *,
    samples: int,
    confidence: float,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """(observed composite improvement, its one-sided lower confidence bound), paired by case."""
    champion, challenger = _aligned(champion, challenger)
    n = len(challenger.cases)
    if n == 0:
        return 0.0, float("-inf")
    observed = composite(challenger.metrics(), weights) - composite(champion.metrics(), weights)
    index = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    names = set(weights)
    ours, theirs = _resampled_metrics(challenger, index, names), _resampled_metrics(champion, index, names)
    differences = sum(w * (ours[name] - theirs[name]) for name, w in weights.items())
    lower = float(np.quantile(np.asarray(differences, dtype=float), 1.0 - confidence))
    return observed, lower


# ---------------------------------------------------------------- the decision


def decide(
    champion_scores: Scores | None,
    challenger_scores: Scores,
    settings: Settings,
    *,
    champion: str = "champion",
    challenger: str = "challenger",
) -> Decision:
    """Gates, then composite, then paired bootstrap; promote only on clear evidence."""
    check_policy_settings(settings)
    bench = settings.bench
    ours = challenger_scores.metrics()
    base: dict[str, Any] = {
        "champion": champion,
        "challenger": challenger,
        "confidence": bench.confidence,
        "challenger_metrics": ours,
        "challenger_score": composite(ours, bench.weights),
    }
    if champion == challenger:
        return Decision(False, "the challenger is the champion", **base)
    failures = gate_failures(ours, settings)
    if failures:
        return Decision(False, "gates failed: " + "; ".join(failures), gates_failed=tuple(failures), **base)
    if champion_scores is None or not champion_scores.cases:
        return Decision(False, "the champion has no scores on this gold set; nothing to compare with", **base)
    theirs_aligned, ours_aligned = _aligned(champion_scores, challenger_scores)
    if not ours_aligned.cases:
        return Decision(False, "no gold case was scored for both models; nothing to compare", **base)
    observed, lower = bootstrap_improvement(
        champion_scores, challenger_scores, bench.weights, samples=bench.bootstrap_samples, confidence=bench.confidence
    )
    evidence = {
        **base,
        "champion_score": composite(theirs_aligned.metrics(), bench.weights),
        "challenger_score": composite(ours_aligned.metrics(), bench.weights),
        "improvement": observed,
        "lower_bound": lower,
        "samples": bench.bootstrap_samples,
        "cases": len(ours_aligned.cases),
        "champion_metrics": champion_scores.metrics(),
    }
    if lower > 0:
        reason = f"composite +{observed:.3f}, lower {bench.confidence:.0%} bound {lower:+.3f} > 0"
        return Decision(True, reason, **evidence)
    reason = f"not a clear win: composite {observed:+.3f}, lower {bench.confidence:.0%} bound {lower:+.3f} <= 0"
    return Decision(False, reason, **evidence)


def apply_decision(decision: Decision, settings: Settings, journal: Journal, *, reason: str | None = None) -> int:
    """Make the challenger champion (atomic, with the decision as evidence); returns captures requeued."""
    return promote(
        ModelRef.parse(decision.challenger),
        settings,
        journal,
        reason=reason or f"bench policy: {decision.reason}",
        evidence=decision.to_dict(),
    )


def promote(ref: ModelRef, settings: Settings, journal: Journal, *, reason: str, evidence: Mapping[str, Any]) -> int:
    """Record `ref` as champion; requeue extraction failures if configured. Returns the count requeued."""
    champion = active_model(settings, journal)
    journal.set_active_model(ref, reason=reason, evidence=evidence, replacing=champion)
    requeued = journal.requeue_failed("extract") if settings.bench.retry_failed_after_promotion else 0
    log.info("champion_changed", previous=str(champion), new=str(ref), reason=reason, requeued=requeued)
    return requeued
