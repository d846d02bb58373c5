"""`membrane bench`: candidates, the run over the gold set with real tiny models,
reports and the journal record, unavailable backends."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import OllamaServer

from membrane.bench import BenchReport, last_report, resolve_candidates, run_bench
from membrane.cli import main
from membrane.config import Settings
from membrane.journal import Journal
from membrane.schema import ModelRef
from membrane.testing.ollama_server import FakeOllama
from tests.support.pipeline import REFERENCE

GOLD_FILE = Path(__file__).resolve().parents[1] / "config" / "eval" / "gold.jsonl"
EMPTY = {"entities": [], "relationships": []}


def gold_subset(path: Path, ids: list[str]) -> Path:
    lines = [line for line in GOLD_FILE.read_text(encoding="utf-8").splitlines() if json.loads(line)["id"] in ids]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def same_answer_gold(path: Path, cases: int) -> Path:
    """A gold set whose every case has the reference labels, so one scripted answer is right for all."""
    texts = [
        "Docker is deployed on the Kubernetes cluster managed by the DevOps team.",
        "The DevOps team manages the Kubernetes cluster; Docker is deployed on it.",
    ]
    records = [{"id": f"s{i:02d}", "text": texts[i % 2], **REFERENCE, "tags": []} for i in range(cases)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as server:
        server.add_scripted("good:1b", [json.dumps(REFERENCE)], parameter_size="1B")
        server.add_scripted("bad:1b", [json.dumps(EMPTY)], parameter_size="1B")
        server.add_scripted("other:7b", [json.dumps(EMPTY)])
        yield server


def test_candidates_come_from_config_pattern_and_embedded(
    make_settings: Callable[..., Settings], ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The champion first, then configured candidates, Ollama models matching the glob, embedded models; no
    duplicates."""
    monkeypatch.setenv("MEMBRANE_MODEL_CACHE", str(tmp_path / "models"))  # no opt-in anchors this machine installed
    settings = make_settings(
        model={"ollama_host": ollama.url},
        bench={"candidates": ["ollama:bad:1b", "embedded:smollm2-135m"], "ollama_pattern": "*:1b"},
    )
    refs, notes = resolve_candidates(settings, ModelRef("embedded", "smollm2-135m"))
    assert [str(r) for r in refs] == [
        "embedded:smollm2-135m",
        "ollama:bad:1b",
        "ollama:good:1b",
        "embedded:gemma3-270m",
        "embedded:gemma3-270m-membrane",
        "embedded:smollm2-135m-membrane",  # trained, shipped in membrane/models/
    ]
    assert notes == []
    assert resolve_candidates(settings, refs[0], [ModelRef("ollama", "x")])[0] == [refs[0], ModelRef("ollama", "x")]


def test_explicit_models_always_include_the_champion(make_settings: Callable[..., Settings]) -> None:
    """`--models` without the champion still benches it first, so the policy has something to compare with."""
    settings = make_settings()
    champion = ModelRef("embedded", "smollm2-135m")
    refs, _ = resolve_candidates(settings, champion, [ModelRef("embedded", "gemma3-270m"), champion])
    assert refs == [champion, ModelRef("embedded", "gemma3-270m")]


def test_ollama_down_while_listing_is_a_note(make_settings: Callable[..., Settings]) -> None:
    """An unreachable Ollama skips the pattern's models with a note instead of failing the run."""
    settings = make_settings(
        model={"ollama_host": f"http://127.0.0.1:{closed_port()}", "timeout_s": 2},
        bench={"ollama_pattern": "qwen*", "include_embedded": False},
    )
    refs, notes = resolve_candidates(settings, ModelRef("embedded", "smollm2-135m"))
    assert refs == [ModelRef("embedded", "smollm2-135m")]
    assert len(notes) == 1 and "qwen*" in notes[0]


def test_unavailable_candidate_is_reported_not_raised(
    make_settings: Callable[..., Settings], tmp_path: Path, ollama: FakeOllama
) -> None:
    """A candidate whose server is down, or whose model is missing, is a row marked unavailable; the others run."""
    settings = make_settings(model={"backend": "ollama", "name": "good:1b", "ollama_host": ollama.url, "timeout_s": 5})
    gold = same_answer_gold(tmp_path / "gold.jsonl", 3)
    with Journal(settings.journal.path) as journal:
        report = run_bench(
            settings,
            journal,
            eval_files=[gold],
            models=[ModelRef("ollama", "good:1b"), ModelRef("ollama", "missing:1b")],
        )
    assert [run.status for run in report.runs] == ["ok", "unavailable"]
    assert "missing:1b" in report.runs[1].detail
    ollama.stop()
    with Journal(settings.journal.path) as journal:
        report = run_bench(settings, journal, eval_files=[gold], models=[ModelRef("ollama", "good:1b")])
    assert report.runs[0].status == "unavailable" and report.runs[0].scores is None


def test_bench_command_reports_and_promotes(tmp_path: Path, ollama: FakeOllama) -> None:
    """`membrane bench --promote` prints the table, writes JSON/Markdown/PNG, records the run and promotes a
    clear winner."""
    gold = same_answer_gold(tmp_path / "gold.jsonl", 12)
    config = tmp_path / "membrane.toml"
    config.write_text(
        f'[model]\nbackend = "ollama"\nname = "bad:1b"\nollama_host = "{ollama.url}"\n'
        f'[journal]\npath = "{tmp_path / "journal.sqlite3"}"\n'
        f'[bench]\nout_dir = "{tmp_path / "out"}"\neval_files = ["{gold}"]\ncandidates = ["ollama:good:1b"]\n'
        "include_embedded = false\nbootstrap_samples = 500\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["--config", str(config), "bench", "--promote"])
    assert result.exit_code == 0, result.output
    assert "ollama:good:1b" in result.output and "promoted ollama:good:1b" in result.output
    files = sorted(p.suffix for p in (tmp_path / "out").iterdir())
    assert files == [".json", ".md", ".png"]
    with Journal(tmp_path / "journal.sqlite3") as journal:
        assert journal.models.last_promotion() == ModelRef("ollama", "good:1b")
        report = last_report(journal)
    assert report is not None and report.id == 1
    good = report.run_for("ollama:good:1b")
    assert good is not None and good.row()["entity_f1"] == 1.0 and good.row()["parameters"] == "1B"
    assert report.run_for("ollama:bad:1b").row()["entity_f1"] == 0.0  # type: ignore[union-attr]
    markdown = Path(report.files["markdown"]).read_text(encoding="utf-8")
    assert "| ollama:good:1b | 1B | 100.0 |" in markdown
    relationships = report.run_for("ollama:good:1b").scores.relationship  # type: ignore[union-attr]
    found = relationships.tp
    assert relationships.fn == 0 and f"| ollama:good:1b | {found} | {found} | 0 | 0 | 0 | 0 |" in markdown
    assert "Policy: promote `ollama:good:1b`: composite +" in markdown  # names the challenger, not as the champion


def test_bench_command_exits_1_when_nothing_could_run(tmp_path: Path) -> None:
    """With every candidate unavailable the run is still recorded, and the exit code is 1."""
    config = tmp_path / "membrane.toml"
    config.write_text(
        f'[model]\nbackend = "ollama"\nname = "qwen2.5:1.5b"\nollama_host = "http://127.0.0.1:{closed_port()}"\n'
        f"timeout_s = 2.0\n"
        f'[journal]\npath = "{tmp_path / "journal.sqlite3"}"\n[bench]\nout_dir = "{tmp_path / "out"}"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["--config", str(config), "bench", "--models", "ollama:qwen2.5:1.5b"])
    assert result.exit_code == 1
    assert "unavailable" in result.output
    assert CliRunner().invoke(main, ["--config", str(config), "bench", "--models", "nocolon"]).exit_code == 2


@pytest.mark.model
@pytest.mark.slow
def test_bench_two_tiny_models_on_a_subset(
    make_settings: Callable[..., Settings], tmp_path: Path, tiny_model_path: Path, gemma_model_path: Path
) -> None:
    """Both real tiny models run through the embedded backend on 3 gold cases; scores, timings and files are real."""
    settings = make_settings(model={"num_predict": 96, "name": "smollm2-135m"}, extraction={"max_repairs": 1})
    gold = gold_subset(tmp_path / "gold.jsonl", ["g003", "g026", "g068"])
    seen: list[tuple[str, int, int]] = []
    with Journal(settings.journal.path) as journal:
        report = run_bench(
            settings,
            journal,
            eval_files=[gold],
            progress=lambda m, d, n: seen.append((m, d, n)),
            models=[ModelRef("embedded", "smollm2-135m"), ModelRef("embedded", "gemma3-270m")],
        )
        stored = journal.models.bench_runs(1)[0]
    assert [(run.model, run.status, run.parameters) for run in report.runs] == [
        ("embedded:smollm2-135m", "ok", "135M"),
        ("embedded:gemma3-270m", "ok", "270M"),
    ]
    for run in report.runs:
        row: dict[str, Any] = run.row()
        assert run.scores is not None and len(run.scores.cases) == 3 and len(run.latencies) == 3
        assert 0.0 <= row["entity_f1"] <= 1.0 and 0.0 <= row["valid_json"] <= 1.0
        assert row["tokens_per_second"] > 0 and 0 < row["p50_s"] <= row["p95_s"]
    assert seen[0] == ("embedded:smollm2-135m", 0, 3) and seen[-1] == ("embedded:gemma3-270m", 3, 3)
    assert stored["id"] == report.id and len(stored["report"]["runs"]) == 2
    assert Path(report.files["plot"]).stat().st_size > 1000
    assert report.decision is not None and report.decision.challenger == "embedded:gemma3-270m"
    verdict = "promote" if report.decision.promote else "keep the champion over"
    markdown = Path(report.files["markdown"]).read_text(encoding="utf-8")
    assert f"Policy: {verdict} `embedded:gemma3-270m`: {report.decision.reason}." in markdown


@pytest.mark.ollama
@pytest.mark.slow
def test_bench_command_with_a_real_ollama_candidate(tmp_path: Path, ollama_server: OllamaServer) -> None:
    """`membrane bench --models ollama:smollm2-135m` runs the real server's model on 2 gold cases, recording a row."""
    gold = gold_subset(tmp_path / "gold.jsonl", ["g003", "g026"])
    config = tmp_path / "membrane.toml"
    config.write_text(
        f'[model]\nbackend = "ollama"\nname = "{ollama_server.smollm2}"\nollama_host = "{ollama_server.host}"\n'
        f"num_predict = 96\ntimeout_s = 120.0\n"
        f'[extraction]\nmax_repairs = 1\n[journal]\npath = "{tmp_path / "journal.sqlite3"}"\n'
        f'[bench]\nout_dir = "{tmp_path / "out"}"\neval_files = ["{gold}"]\ninclude_embedded = false\n',
        encoding="utf-8",
    )
    model = f"ollama:{ollama_server.smollm2}"
    result = CliRunner().invoke(main, ["--config", str(config), "bench", "--models", model])
    assert result.exit_code == 0, result.output
    assert model in result.output
    with Journal(tmp_path / "journal.sqlite3") as journal:
        report = last_report(journal)
    run = report.run_for(model) if report else None
    assert run is not None and run.status == "ok" and run.scores is not None and len(run.scores.cases) == 2
    row: dict[str, Any] = run.row()
    assert str(row["parameters"]).endswith("M") and row["tokens_per_second"] > 0 and 0 < row["p50_s"] <= row["p95_s"]


# ---------------------------------------------------------------- stored reports

# Written by `run_bench` at commit b4ce687, the last with hand-written to_dict/from_dict codecs:
# champion ollama:bad:1b, challengers good:1b (wins), broken:1b (never valid) and missing:1b
# (unavailable), on 5 gold cases. It is the report file; the journal stored the same dict.
OLD_REPORT = Path(__file__).resolve().parent / "data" / "bench-report-b4ce687.json"


def test_report_written_by_the_old_codecs_loads_and_dumps_unchanged() -> None:
    """A report file from before the pydantic models loads whole, and dumping it gives the same JSON back."""
    stored = json.loads(OLD_REPORT.read_text(encoding="utf-8"))
    report = BenchReport.model_validate(stored)
    assert [(run.model, run.status) for run in report.runs] == [
        ("ollama:bad:1b", "ok"),
        ("ollama:good:1b", "ok"),
        ("ollama:broken:1b", "ok"),
        ("ollama:missing:1b", "unavailable"),
    ]
    broken = report.scores_for("ollama:broken:1b")
    assert broken is not None and not broken.cases[0].valid and "no valid extraction" in broken.cases[0].error
    assert report.decision is not None and report.decision.promote and report.decision.challenger == "ollama:good:1b"
    assert json.loads(json.dumps(report.model_dump(mode="json"))) == stored


def test_report_stored_in_the_journal_by_the_old_codecs_drives_models_and_promote(tmp_path: Path) -> None:
    """An old report in the journal is the last run that `membrane models` shows and `membrane promote` judges by."""
    config = tmp_path / "membrane.toml"
    config.write_text(
        f'[model]\nbackend = "ollama"\nname = "bad:1b"\n[journal]\npath = "{tmp_path / "journal.sqlite3"}"\n'
        f"[bench]\ninclude_embedded = false\nbootstrap_samples = 500\n",
        encoding="utf-8",
    )
    with Journal(tmp_path / "journal.sqlite3") as journal:
        run_id = journal.models.record_bench_run(json.loads(OLD_REPORT.read_text(encoding="utf-8")))
        last = last_report(journal)
    assert last is not None and last.id == run_id and last.eval_sha256.startswith("f40b")
    shown = CliRunner().invoke(main, ["--config", str(config), "models", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["last_bench_run"]["rows"]["ollama:good:1b"]["entity_f1"] == pytest.approx(9 / 11)
    result = CliRunner().invoke(main, ["--config", str(config), "promote", "ollama:good:1b"])
    assert result.exit_code == 0, result.output
    assert "champion is now ollama:good:1b (was ollama:bad:1b)" in result.output


def _long_real_set(path: Path, cases: int) -> Path:
    """A second labelled set with its own ids and passages over 50 words, labelled like the reference."""
    text = ("Docker is deployed on the Kubernetes cluster managed by the DevOps team. " * 5).strip()
    records = [
        {"id": f"r{i:02d}", "text": text, **REFERENCE, "tags": ["long"], "source": "test", "licence": "CC0-1.0"}
        for i in range(cases)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_bench_reports_each_set_and_length_band(
    make_settings: Callable[..., Settings], tmp_path: Path, ollama: FakeOllama
) -> None:
    """Two sets are scored in one run: the report names both with their case ids, and the Markdown has a table
    for all cases, one per set and one per length band, each counting only its cases."""
    settings = make_settings(
        model={"backend": "ollama", "name": "bad:1b", "ollama_host": ollama.url, "timeout_s": 5},
        bench={"bootstrap_samples": 200, "include_embedded": False},
    )
    gold = same_answer_gold(tmp_path / "gold.jsonl", 4)
    real = _long_real_set(tmp_path / "real.jsonl", 3)
    with Journal(settings.journal.path) as journal:
        report = run_bench(settings, journal, eval_files=[gold, real], models=[ModelRef("ollama", "good:1b")])
    assert [(s.name, len(s.case_ids)) for s in report.eval_sets] == [("gold", 4), ("real", 3)]
    assert report.cases == 7 and report.case_words["r00"] > 50 and report.case_words["s00"] < 20
    titles = [title for title, _ in report.sections()]
    assert titles == [
        "All sets together (7 cases)",
        "Set gold (4 cases)",
        "Set real (3 cases)",
        "All sets, captures of under 20 words (4 cases)",
        "All sets, captures of over 50 words (3 cases)",
    ]
    for title, runs in report.sections():
        scored = runs[1].scores
        assert scored is not None and len(scored.cases) == int(title.rsplit("(", 1)[1].split()[0])
    markdown = Path(report.files["markdown"]).read_text(encoding="utf-8")
    assert "## Set real (3 cases)" in markdown and "| ollama:good:1b |" in markdown
    assert report.decision is not None and report.decision.promote  # right on both sets


def test_a_case_id_in_two_sets_is_a_config_error(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Two sets sharing a case id cannot be reported apart, so the run refuses them, naming the id."""
    from membrane.errors import ConfigError

    settings = make_settings()
    gold = same_answer_gold(tmp_path / "a.jsonl", 2)
    again = same_answer_gold(tmp_path / "b.jsonl", 2)
    with Journal(settings.journal.path) as journal, pytest.raises(ConfigError, match="s00"):
        run_bench(settings, journal, eval_files=[gold, again], models=[ModelRef("ollama", "good:1b")])
