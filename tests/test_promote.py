"""The promotion policy on scripted score tables, promotion and rollback in the
journal, and the `membrane models / promote / rollback` commands."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from membrane.champion import effective_champion
from membrane.cli import main
from membrane.config import Settings
from membrane.errors import ConfigError, MembraneError, PromotionRefused
from membrane.journal import Journal
from membrane.promote import (
    apply_decision,
    bootstrap_improvement,
    choose_challenger,
    decide,
    promote,
    promote_manually,
)
from membrane.schema import ModelRef
from membrane.score import CaseScore, Counts, Scores


def table(rows: list[tuple[int, int, int, int, int, int]], valid: list[bool] | None = None) -> Scores:
    """Scores from per-case (entity tp, fp, fn, relationship tp, fp, fn) rows."""
    valid = valid or [True] * len(rows)
    return Scores(
        cases=tuple(
            CaseScore(
                id=f"c{i:02d}",
                valid=ok,
                first_attempt_valid=ok,
                entities=Counts(*row[:3]),
                relationships=Counts(*row[3:]),
                relaxed=Counts(*row[3:]),
            )
            for i, (row, ok) in enumerate(zip(rows, valid, strict=True))
        )
    )


MEDIOCRE = [(2, 1, 1, 1, 1, 1)] * 40  # entity F1 0.667, relationship F1 0.5
STRONG = [(3, 0, 0, 2, 0, 0)] * 40  # everything right


def noisy(wins: int, losses: int) -> list[tuple[int, int, int, int, int, int]]:
    """MEDIOCRE, one case better per win and one worse per loss: a small, noisy difference."""
    better, worse = (3, 0, 0, 2, 0, 0), (1, 2, 2, 0, 2, 2)
    return [better] * wins + [worse] * losses + MEDIOCRE[: 40 - wins - losses]


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(bench={"bootstrap_samples": 1000})


@pytest.fixture
def journal(settings: Settings) -> Any:
    with Journal(settings.journal.path) as journal:
        yield journal


def test_clear_win_promotes(settings: Settings) -> None:
    """A challenger far better on every case passes the gates and the bootstrap bound is above zero."""
    decision = decide(table(MEDIOCRE), table(STRONG), settings, champion="embedded:a", challenger="embedded:b")
    assert decision.promote, decision.reason
    assert decision.lower_bound is not None and decision.lower_bound > 0
    assert decision.improvement == pytest.approx(0.4 * (1 - 2 / 3) + 0.5 * (1 - 0.5))


def _two_sets(cases: int) -> dict[str, frozenset[str]]:
    return {
        "gold": frozenset(f"c{i:02d}" for i in range(cases)),
        "real": frozenset(f"c{i:02d}" for i in range(cases, 2 * cases)),
    }


def test_a_win_on_one_set_alone_is_not_promoted(settings: Settings) -> None:
    """A challenger perfect on the gold set but worse on the real-text set wins the pooled composite,
    yet is kept out: the policy compares each set, and no set may fall behind."""
    worse = [(2, 1, 1, 1, 2, 1)] * 40  # MEDIOCRE with one more wrong relationship: rel F1 0.4
    champion, challenger = table(MEDIOCRE * 2), table(STRONG + worse)
    pooled = decide(champion, challenger, settings, champion="embedded:a", challenger="embedded:b")
    by_set = decide(champion, challenger, settings, champion="embedded:a", challenger="embedded:b", sets=_two_sets(40))
    assert pooled.promote, pooled.reason
    assert not by_set.promote and "behind the champion on a set: real" in by_set.reason


def test_sets_count_the_same_and_are_resampled_apart(settings: Settings) -> None:
    """With sets, the improvement is the mean of the per-set improvements, whatever each set's size."""
    champion = table(MEDIOCRE + MEDIOCRE[:10])
    challenger = table(STRONG + MEDIOCRE[:10])
    sets = {"gold": frozenset(f"c{i:02d}" for i in range(40)), "real": frozenset(f"c{i:02d}" for i in range(40, 50))}
    observed, lower = bootstrap_improvement(
        champion, challenger, settings.bench.weights, samples=500, confidence=0.95, sets=sets
    )
    full = 0.4 * (1 - 2 / 3) + 0.5 * (1 - 0.5)
    assert observed == pytest.approx(full / 2)
    assert lower == pytest.approx(full / 2)  # the real set shows no difference on any resample


def test_small_noisy_win_keeps_the_champion(settings: Settings) -> None:
    """Three cases better and two worse out of 40 is a positive mean but not a clear win."""
    decision = decide(table(MEDIOCRE), table(noisy(3, 2)), settings, champion="embedded:a", challenger="embedded:b")
    assert decision.improvement is not None and decision.improvement > 0
    assert not decision.promote
    assert decision.lower_bound is not None and decision.lower_bound <= 0
    assert "not a clear win" in decision.reason


def test_gate_failure_keeps_the_champion(settings: Settings) -> None:
    """A challenger that wins on F1 but has invalid JSON on 2 of 40 cases (95% < 99%) is refused."""
    valid = [True] * 38 + [False] * 2
    decision = decide(table(MEDIOCRE), table(STRONG, valid), settings, champion="embedded:a", challenger="embedded:b")
    assert not decision.promote
    assert decision.gates_failed and decision.gates_failed[0].startswith("valid_json 0.950")


def test_metric_floor_is_a_gate(make_settings: Callable[..., Settings]) -> None:
    """A metric under its configured floor fails the gates whatever the composite says."""
    settings = make_settings(bench={"floors": {"relationship_f1": 0.9}})
    decision = decide(table([(0, 3, 3, 0, 2, 2)] * 40), table(MEDIOCRE), settings, champion="x:a", challenger="x:b")
    assert not decision.promote and "relationship_f1 0.500 < floor 0.900" in decision.reason


def test_bootstrap_is_deterministic_and_paired(settings: Settings) -> None:
    """The same tables always give the same bound; identical models give an improvement of exactly 0."""
    first = bootstrap_improvement(
        table(MEDIOCRE), table(noisy(5, 1)), settings.bench.weights, samples=500, confidence=0.95
    )
    again = bootstrap_improvement(
        table(MEDIOCRE), table(noisy(5, 1)), settings.bench.weights, samples=500, confidence=0.95
    )
    assert first == again
    assert bootstrap_improvement(
        table(noisy(5, 1)), table(noisy(5, 1)), {"entity_f1": 1.0}, samples=200, confidence=0.95
    ) == (0.0, 0.0)


def test_unknown_metric_in_weights_is_a_config_error(make_settings: Callable[..., Settings]) -> None:
    """A weight on a metric the scorer does not produce is a ConfigError naming bench.weights."""
    settings = make_settings(bench={"weights": {"entity_f2": 1.0}})
    with pytest.raises(ConfigError) as info:
        decide(table(MEDIOCRE), table(STRONG), settings)
    assert info.value.key == "bench.weights"


def test_promotion_is_recorded_with_evidence_and_requeues_failures(settings: Settings, journal: Journal) -> None:
    """Applying a promote decision changes the active model, stores the evidence, and requeues extraction failures."""
    journal.captures.enqueue("a" * 64, "inbox/a.txt", "some text")
    assert journal.claims.claim() is not None
    journal.captures.fail("a" * 64, stage="extract", reason="no valid extraction")
    decision = decide(
        table(MEDIOCRE), table(STRONG), settings, champion="embedded:smollm2-135m", challenger="embedded:gemma3-270m"
    )
    assert apply_decision(decision, settings, journal) == 1
    assert journal.models.last_promotion() == ModelRef("embedded", "gemma3-270m")
    record = journal.models.promotions(1)[0]
    assert record["previous"] == "embedded:smollm2-135m"
    assert record["evidence"]["lower_bound"] == decision.lower_bound
    assert journal.status.counts()["queued"] == 1


def test_rollback_restores_the_last_champion(settings: Settings, journal: Journal) -> None:
    """Two promotions then rollbacks walk back to the configured model; one more rollback is refused."""
    assert effective_champion(settings, journal) == ModelRef("embedded", "smollm2-135m")
    promote(ModelRef("embedded", "gemma3-270m"), settings, journal, reason="test", evidence={})
    promote(ModelRef("ollama", "qwen2.5:1.5b"), settings, journal, reason="test", evidence={})
    assert journal.models.rollback_active_model(reason="test") == ModelRef("embedded", "gemma3-270m")
    assert effective_champion(settings, journal) == ModelRef("embedded", "gemma3-270m")
    assert journal.models.rollback_active_model(reason="test") == ModelRef("embedded", "smollm2-135m")
    with pytest.raises(MembraneError):
        journal.models.rollback_active_model(reason="test")


def test_choose_challenger_prefers_a_clear_win_then_shows_the_best_loser(settings: Settings) -> None:
    """Of a bench run's scores the clear winner is judged; without one, the highest composite; alone, nothing."""
    scores = {"x:champion": table(MEDIOCRE), "x:noisy": table(noisy(3, 2)), "x:strong": table(STRONG)}
    chosen = choose_challenger(scores, "x:champion", settings)
    assert chosen is not None and chosen.challenger == "x:strong" and chosen.promote
    del scores["x:strong"]
    chosen = choose_challenger(scores, "x:champion", settings)
    assert chosen is not None and chosen.challenger == "x:noisy" and not chosen.promote
    assert choose_challenger({"x:champion": table(MEDIOCRE)}, "x:champion", settings) is None


def test_manual_promotion_refusals_change_nothing(settings: Settings, journal: Journal) -> None:
    """The champion itself is a no-op, and a model without scores is refused, both without a promotion recorded."""
    champion = effective_champion(settings, journal)
    assert not promote_manually(champion, settings, journal, None).changed
    with pytest.raises(PromotionRefused, match="has no scores in any bench run"):
        promote_manually(ModelRef("embedded", "gemma3-270m"), settings, journal, None)
    assert journal.models.promotions() == [] and effective_champion(settings, journal) == champion


def test_manual_promotion_judges_a_scores_table(settings: Settings, journal: Journal) -> None:
    """The policy behind `membrane promote` takes model -> scores, not a bench report, and names the run."""
    scores = {"embedded:smollm2-135m": table(MEDIOCRE), "embedded:gemma3-270m": table(STRONG)}
    done = promote_manually(ModelRef("embedded", "gemma3-270m"), settings, journal, scores, run_id=7)
    assert done.changed and done.previous == ModelRef("embedded", "smollm2-135m")
    assert effective_champion(settings, journal) == ModelRef("embedded", "gemma3-270m")
    assert journal.models.promotions(1)[0]["reason"].startswith("manual promotion, bench run 7: ")


def test_policy_modules_do_not_load_the_capture_pipeline() -> None:
    """Importing bench and promote loads neither the pipeline nor the inbox."""
    code = (
        "import sys, membrane.bench, membrane.promote; "
        "print(sorted(m for m in sys.modules if m.startswith('membrane.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "membrane.promote" in loaded and "membrane.pipeline" not in loaded and "membrane.inbox" not in loaded


def test_champion_readers_do_not_load_the_policy() -> None:
    """The pipeline, the daemon, the doctor and the CLI read the champion without importing promote or bench."""
    code = (
        "import sys, membrane.pipeline, membrane.daemon, membrane.doctor, membrane.cli;"
        "print(sorted(m for m in sys.modules if m.startswith('membrane.')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "membrane.champion" in loaded and "membrane.promote" not in loaded and "membrane.bench" not in loaded


# ---------------------------------------------------------------- CLI


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "membrane.toml"
    path.write_text(
        f'[model]\nname = "smollm2-135m"\n[journal]\npath = "{tmp_path / "journal.sqlite3"}"\n'
        f'[bench]\nout_dir = "{tmp_path / "bench"}"\nbootstrap_samples = 500\ninclude_embedded = true\n',
        encoding="utf-8",
    )
    return path


def _record_run(tmp_path: Path, challenger_rows: list[tuple[int, int, int, int, int, int]]) -> None:
    """A bench run in the journal where the configured champion scores MEDIOCRE."""
    from membrane.bench import BenchReport, ModelRun

    runs = (
        ModelRun(model="embedded:smollm2-135m", status="ok", scores=table(MEDIOCRE), latencies=(1.0,)),
        ModelRun(model="embedded:gemma3-270m", status="ok", scores=table(challenger_rows), latencies=(2.0,)),
    )
    report = BenchReport(
        created_at="2026-01-01T00:00:00Z",
        eval_file="gold.jsonl",
        eval_sha256="0" * 64,
        cases=40,
        champion="embedded:smollm2-135m",
        runs=runs,
    )
    with Journal(tmp_path / "journal.sqlite3") as journal:
        journal.models.record_bench_run(report.model_dump(mode="json"))


def test_promote_command_follows_the_policy(tmp_path: Path) -> None:
    """`membrane promote` refuses a noisy win (exit 1, champion kept) and accepts a clear one."""
    config, runner = _config(tmp_path), CliRunner()
    _record_run(tmp_path, noisy(3, 2))
    result = runner.invoke(main, ["--config", str(config), "promote", "embedded:gemma3-270m"])
    assert result.exit_code == 1 and "the policy keeps embedded:smollm2-135m" in result.output
    _record_run(tmp_path, STRONG)
    result = runner.invoke(main, ["--config", str(config), "promote", "embedded:gemma3-270m"])
    assert result.exit_code == 0, result.output
    assert "champion is now embedded:gemma3-270m" in result.output
    result = runner.invoke(main, ["--config", str(config), "models", "--json"])
    data = json.loads(result.output)
    assert data["champion"] == "embedded:gemma3-270m" and data["promoted"]
    assert data["last_bench_run"]["rows"]["embedded:gemma3-270m"]["entity_f1"] == 1.0


def test_promote_force_and_rollback_commands(tmp_path: Path) -> None:
    """--force promotes without scores, recording that it was forced; `membrane rollback` undoes it."""
    config, runner = _config(tmp_path), CliRunner()
    result = runner.invoke(main, ["--config", str(config), "promote", "ollama:qwen2.5:1.5b"])
    assert result.exit_code == 1 and "no scores" in result.output
    result = runner.invoke(main, ["--config", str(config), "promote", "ollama:qwen2.5:1.5b", "--force"])
    assert result.exit_code == 0, result.output
    with Journal(tmp_path / "journal.sqlite3") as journal:
        assert journal.models.last_promotion() == ModelRef("ollama", "qwen2.5:1.5b")
        assert journal.models.promotions(1)[0]["evidence"]["forced"] is True
    result = runner.invoke(main, ["--config", str(config), "rollback"])
    assert result.exit_code == 0 and "embedded:smollm2-135m" in result.output
    result = runner.invoke(main, ["--config", str(config), "rollback"])
    assert result.exit_code == 1 and "no previous champion" in result.output


def test_models_command_lists_champion_and_candidates(tmp_path: Path) -> None:
    """`membrane models` shows the configured champion and every embedded candidate, benched or not."""
    result = CliRunner().invoke(main, ["--config", str(_config(tmp_path)), "models"])
    assert result.exit_code == 0, result.output
    assert "champion  embedded:smollm2-135m  (configured [model])" in result.output
    assert "embedded:gemma3-270m" in result.output and "not benched" in result.output


def test_promote_command_rejects_bad_names(tmp_path: Path) -> None:
    """A name without a backend, or with an unknown backend, is a usage error (exit 2)."""
    config, runner = _config(tmp_path), CliRunner()
    assert runner.invoke(main, ["--config", str(config), "promote", "gemma"]).exit_code == 2
    assert runner.invoke(main, ["--config", str(config), "promote", "nosuch:model", "--force"]).exit_code == 2
