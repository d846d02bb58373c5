"""The promotion policy: whether a challenger's scores justify replacing the
champion, which challenger of a bench run to judge, and applying that
decision to the journal, for the scheduler and for `membrane promote`.
(Which model is champion now is membrane.champion.effective_champion.)

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
4. With several evaluation sets (the gold set and the real-text set), the
   composite is the mean of the per-set composites, the bootstrap resamples
   within each set (stratified), and the challenger's composite on no single
   set may fall more than bench.set_tolerance below the champion's: a model
   cannot win on one set's style alone.
Otherwise the champion stays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from membrane.champion import effective_champion
from membrane.config import Settings
from membrane.errors import ConfigError, PromotionRefused
from membrane.journal import Journal
from membrane.logs import get_logger
from membrane.schema import ModelRef
from membrane.score import METRICS, Scores

__all__ = [
    "BOOTSTRAP_SEED",
    "Decision",
    "Promotion",
    "apply_decision",
    "bootstrap_improvement",
    "check_policy_settings",
    "choose_challenger",
    "composite",
    "decide",
    "gate_failures",
    "mean_composite",
    "promote",
    "promote_manually",
    "set_composites",
]

log = get_logger(__name__)

BOOTSTRAP_SEED = 0
_COUNT_FIELDS = {"entity": "entities", "relationship": "relationships", "relaxed_relationship": "relaxed"}


class Decision(BaseModel):
    """The policy's answer for one challenger against the champion, with its evidence
    (stored in bench reports and as a promotion's evidence)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

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
    challenger_metrics: dict[str, float] = Field(default_factory=dict)
    champion_metrics: dict[str, float] = Field(default_factory=dict)


def check_policy_settings(settings: Settings) -> None:
    """Raise ConfigError when bench.weights or bench.floors name an unknown metric."""
    for key, table in (("bench.weights", settings.bench.weights), ("bench.floors", settings.bench.floors)):
        unknown = sorted(set(table) - set(METRICS))
        if unknown:
            raise ConfigError(f"{key}: unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}", key=key)


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
    return Scores(cases=tuple(theirs[i] for i in shared)), Scores(cases=tuple(mine[i] for i in shared))


def _strata(scores: Scores, sets: Mapping[str, frozenset[str]] | None) -> dict[str, Scores]:
    """`scores` split by set (set name -> its cases); one stratum "" without sets. Empty strata are left out."""
    if not sets:
        return {"": scores}
    split = {name: Scores(cases=tuple(c for c in scores.cases if c.id in ids)) for name, ids in sets.items()}
    return {name: part for name, part in split.items() if part.cases}


def set_composites(
    scores: Scores, weights: Mapping[str, float], sets: Mapping[str, frozenset[str]] | None = None
) -> dict[str, float]:
    """Set name -> composite score on that set's cases ("" -> the whole, without sets)."""
    return {name: composite(part.metrics(), weights) for name, part in _strata(scores, sets).items()}


def mean_composite(
    scores: Scores, weights: Mapping[str, float], sets: Mapping[str, frozenset[str]] | None = None
) -> float:
    """The policy's composite: the mean of the per-set composites (each set counts the same)."""
    values = set_composites(scores, weights, sets)
    return sum(values.values()) / len(values) if values else 0.0


def bootstrap_improvement(
    champion: Scores,
    challenger: Scores,
    weights: Mapping[str, float],
    *,
    samples: int,
    confidence: float,
    seed: int = BOOTSTRAP_SEED,
    sets: Mapping[str, frozenset[str]] | None = None,
) -> tuple[float, float]:
    """(observed improvement of the mean per-set composite, its one-sided lower confidence bound),
    paired by case and resampled within each set."""
    champion, challenger = _aligned(champion, challenger)
    theirs_by_set, ours_by_set = _strata(champion, sets), _strata(challenger, sets)
    if not ours_by_set or not challenger.cases:
        return 0.0, float("-inf")
    rng = np.random.default_rng(seed)
    names = set(weights)
    observed, differences = 0.0, np.zeros(samples)
    for name, ours_part in ours_by_set.items():
        theirs_part = theirs_by_set[name]
        n = len(ours_part.cases)
        observed += composite(ours_part.metrics(), weights) - composite(theirs_part.metrics(), weights)
        index = rng.integers(0, n, size=(samples, n))
        ours, theirs = _resampled_metrics(ours_part, index, names), _resampled_metrics(theirs_part, index, names)
        differences = differences + sum(w * (ours[m] - theirs[m]) for m, w in weights.items())
    count = len(ours_by_set)
    lower = float(np.quantile(np.asarray(differences, dtype=float) / count, 1.0 - confidence))
    return observed / count, lower


# ---------------------------------------------------------------- the decision


def decide(
    champion_scores: Scores | None,
    challenger_scores: Scores,
    settings: Settings,
    *,
    champion: str = "champion",
    challenger: str = "challenger",
    sets: Mapping[str, frozenset[str]] | None = None,
) -> Decision:
    """Gates, then composite, then paired bootstrap (stratified by set); promote only on clear evidence."""
    check_policy_settings(settings)
    bench = settings.bench
    ours = challenger_scores.metrics()
    base: dict[str, Any] = {
        "champion": champion,
        "challenger": challenger,
        "confidence": bench.confidence,
        "challenger_metrics": ours,
        "challenger_score": mean_composite(challenger_scores, bench.weights, sets),
    }
    if champion == challenger:
        return Decision(promote=False, reason="the challenger is the champion", **base)
    failures = gate_failures(ours, settings)
    if failures:
        reason = "gates failed: " + "; ".join(failures)
        return Decision(promote=False, reason=reason, gates_failed=tuple(failures), **base)
    if champion_scores is None or not champion_scores.cases:
        reason = "the champion has no scores on this gold set; nothing to compare with"
        return Decision(promote=False, reason=reason, **base)
    theirs_aligned, ours_aligned = _aligned(champion_scores, challenger_scores)
    if not ours_aligned.cases:
        return Decision(promote=False, reason="no gold case was scored for both models; nothing to compare", **base)
    observed, lower = bootstrap_improvement(
        champion_scores,
        challenger_scores,
        bench.weights,
        samples=bench.bootstrap_samples,
        confidence=bench.confidence,
        sets=sets,
    )
    evidence = {
        **base,
        "champion_score": mean_composite(theirs_aligned, bench.weights, sets),
        "challenger_score": mean_composite(ours_aligned, bench.weights, sets),
        "improvement": observed,
        "lower_bound": lower,
        "samples": bench.bootstrap_samples,
        "cases": len(ours_aligned.cases),
        "champion_metrics": champion_scores.metrics(),
    }
    behind = _sets_behind(theirs_aligned, ours_aligned, settings, sets)
    if behind:
        reason = "behind the champion on a set: " + "; ".join(behind)
        return Decision(promote=False, reason=reason, **evidence)
    if lower > 0:
        reason = f"composite +{observed:.3f}, lower {bench.confidence:.0%} bound {lower:+.3f} > 0"
        return Decision(promote=True, reason=reason, **evidence)
    reason = f"not a clear win: composite {observed:+.3f}, lower {bench.confidence:.0%} bound {lower:+.3f} <= 0"
    return Decision(promote=False, reason=reason, **evidence)


def _sets_behind(
    champion: Scores, challenger: Scores, settings: Settings, sets: Mapping[str, frozenset[str]] | None
) -> list[str]:
    """The sets on which the challenger's composite is more than bench.set_tolerance below the champion's."""
    if not sets or len(sets) < 2:
        return []
    weights, tolerance = settings.bench.weights, settings.bench.set_tolerance
    theirs, ours = set_composites(champion, weights, sets), set_composites(challenger, weights, sets)
    return [
        f"{name} {ours[name]:.3f} < {theirs[name]:.3f} - {tolerance:.3f}"
        for name in ours
        if name in theirs and ours[name] < theirs[name] - tolerance
    ]


def choose_challenger(
    scores: Mapping[str, Scores], champion: str, settings: Settings, sets: Mapping[str, frozenset[str]] | None = None
) -> Decision | None:
    """The decision for the best challenger among a bench run's scored models (model -> scores):
    the promotable one with the highest lower bound, else the one with the highest composite
    (to show why it was not promoted); None when no challenger was scored."""
    decisions = [
        decide(scores.get(champion), theirs, settings, champion=champion, challenger=model, sets=sets)
        for model, theirs in scores.items()
        if model != champion
    ]
    if not decisions:
        return None
    promotable = [d for d in decisions if d.promote]
    if promotable:
        return max(promotable, key=lambda d: d.lower_bound or 0.0)
    return max(decisions, key=lambda d: d.challenger_score if d.challenger_score is not None else float("-inf"))


# ---------------------------------------------------------------- applying it


def apply_decision(decision: Decision, settings: Settings, journal: Journal, *, reason: str | None = None) -> int:
    """Make the challenger champion (atomic, with the decision as evidence); returns captures requeued."""
    return promote(
        ModelRef.parse(decision.challenger),
        settings,
        journal,
        reason=reason or f"bench policy: {decision.reason}",
        evidence=decision.model_dump(mode="json"),
    )


def promote(ref: ModelRef, settings: Settings, journal: Journal, *, reason: str, evidence: Mapping[str, Any]) -> int:
    """Record `ref` as champion; requeue extraction failures if configured. Returns the count requeued."""
    champion = effective_champion(settings, journal)
    journal.models.set_active_model(ref, reason=reason, evidence=evidence, replacing=champion)
    requeued = journal.captures.requeue_failed("extract") if settings.bench.retry_failed_after_promotion else 0
    log.info("champion_changed", previous=str(champion), new=str(ref), reason=reason, requeued=requeued)
    return requeued


@dataclass(frozen=True)
class Promotion:
    """What a manual promotion did; `changed` is False when the model already was champion."""

    previous: ModelRef
    champion: ModelRef
    requeued: int = 0
    changed: bool = True


def promote_manually(
    ref: ModelRef,
    settings: Settings,
    journal: Journal,
    scores: Mapping[str, Scores] | None,
    *,
    run_id: int | None = None,
    force: bool = False,
    sets: Mapping[str, frozenset[str]] | None = None,
) -> Promotion:
    """`membrane promote`: make `ref` champion if the policy, on the per-case `scores` (model ->
    scores) of the last bench run, `run_id`, says it clearly beats the champion on its evaluation
    `sets` (set name -> case ids); `scores` None means no bench run. `force` skips the policy (and
    says so in the evidence). Raises PromotionRefused
    when the policy keeps the champion or `ref` has no scores."""
    champion = effective_champion(settings, journal)
    if ref == champion:
        return Promotion(champion, ref, changed=False)
    decision = _decision_on(scores, champion, ref, settings, sets)
    if force:
        forced = decision.model_dump(mode="json") if decision else None
        evidence = {"forced": True, "bench_run": run_id, "decision": forced}
        requeued = promote(ref, settings, journal, reason="manual promotion (--force)", evidence=evidence)
        return Promotion(champion, ref, requeued)
    if decision is None:
        where = f"bench run {run_id}" if scores is not None else "any bench run"
        raise PromotionRefused(
            f"{ref} has no scores in {where}; run `membrane bench --models {ref},{champion}` or use --force"
        )
    if not decision.promote:
        raise PromotionRefused(f"the policy keeps {champion}: {decision.reason} (--force overrides)")
    reason = f"manual promotion, bench run {run_id}: {decision.reason}"
    return Promotion(champion, ref, apply_decision(decision, settings, journal, reason=reason))


def _decision_on(
    scores: Mapping[str, Scores] | None,
    champion: ModelRef,
    ref: ModelRef,
    settings: Settings,
    sets: Mapping[str, frozenset[str]] | None = None,
) -> Decision | None:
    """The policy's decision for `ref` against the champion on the last run's scores; None without scores."""
    theirs = scores.get(str(ref)) if scores is not None else None
    if scores is None or theirs is None:
        return None
    return decide(scores.get(str(champion)), theirs, settings, champion=str(champion), challenger=str(ref), sets=sets)
