"""Benchmarks: candidate models over the gold set, reports (JSON, Markdown,
PNG), the run recorded in the journal, and the scheduled re-benchmark.

A candidate is a ModelRef ("backend:name"): the current champion, then
bench.candidates, then Ollama models matching bench.ollama_pattern, then the
embedded models when bench.include_embedded (``--models`` replaces the whole
list). A candidate whose backend is down or whose model is missing is reported
as unavailable; the run goes on with the others.

The policy's decision is part of every report; it is applied (a promotion)
only by the scheduler when bench.auto_promote, or by `membrane bench
--promote` / `membrane promote`.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from membrane.backends import get_backend
from membrane.champion import effective_champion
from membrane.clock import iso_utc_seconds
from membrane.config import Settings
from membrane.errors import ConfigError, ExtractionFailed, MembraneError, ModelNotFound, ModelUnavailable
from membrane.extract import Extractor
from membrane.files import file_sha256
from membrane.journal import Journal, read_recorded_outputs
from membrane.logs import get_logger
from membrane.promote import Decision, apply_decision, check_policy_settings, choose_challenger
from membrane.schema import ModelRef
from membrane.score import GoldCase, Prediction, Scores, load_gold, score_case

__all__ = [
    "BenchReport",
    "BenchScheduler",
    "EvalSet",
    "LENGTH_BANDS",
    "ModelRun",
    "Progress",
    "bench_model",
    "last_report",
    "load_eval_sets",
    "resolve_candidates",
    "run_bench",
    "run_scheduled_bench",
]

log = get_logger(__name__)

# progress(model, cases done, cases in all); called once with 0 before the first case.
Progress = Callable[[str, int, int], None]

OK, UNAVAILABLE = "ok", "unavailable"


# Stored reports carry derived keys too (a run's table "row"): ignored on load, recomputed.
_STORED = ConfigDict(frozen=True, extra="ignore")


class ModelRun(BaseModel):
    """One candidate's pass over the gold set."""

    model_config = _STORED

    model: str
    status: str  # "ok" or "unavailable"
    detail: str = ""
    parameters: str = ""
    scores: Scores | None = None
    completion_tokens: int = 0
    generation_seconds: float = 0.0
    calls: int = 0
    latencies: tuple[float, ...] = ()

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0

    def latency(self, percentile: float) -> float | None:
        return float(np.percentile(self.latencies, percentile)) if self.latencies else None

    def row(self) -> dict[str, Any]:
        """The table row: the original benchmark's columns plus the relaxed score."""
        metrics = self.scores.metrics() if self.scores else {}
        return {
            "model": self.model,
            "parameters": self.parameters,
            "status": self.status,
            "valid_json": metrics.get("valid_json"),
            "first_attempt_valid_json": metrics.get("first_attempt_valid_json"),
            "entity_f1": metrics.get("entity_f1"),
            "relationship_f1": metrics.get("relationship_f1"),
            "relaxed_relationship_f1": metrics.get("relaxed_relationship_f1"),
            "tokens_per_second": self.tokens_per_second if self.status == OK else None,
            "p50_s": self.latency(50),
            "p95_s": self.latency(95),
        }

    @model_serializer(mode="wrap")
    def _with_row(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The row goes into reports too, so a report file is readable without this code.
        return {**handler(self), "row": self.row()}


class EvalSet(BaseModel):
    """One labelled set a bench run scored: its name, file, bytes and case ids."""

    model_config = _STORED

    name: str
    file: str
    sha256: str
    case_ids: tuple[str, ...]


# Length bands of the report's split, by the words of a case's text: (label, lowest, highest).
LENGTH_BANDS = (("under 20 words", 0, 19), ("20-50 words", 20, 50), ("over 50 words", 51, 10**9))


def _subset_run(run: ModelRun, ids: set[str]) -> ModelRun:
    """`run` restricted to the cases in `ids`; latencies from those cases, speed left out."""
    if run.scores is None:
        return run
    cases = tuple(c for c in run.scores.cases if c.id in ids)
    latencies = tuple(c.seconds for c in cases if c.seconds is not None)
    return run.model_copy(
        update={
            "scores": Scores(cases=cases),
            "latencies": latencies,
            "completion_tokens": 0,
            "generation_seconds": 0.0,
        }
    )


class BenchReport(BaseModel):
    """One bench run: every candidate's scores, the policy's view, where the files went.

    Stored as JSON (`model_dump(mode="json")`) in the report file and the journal;
    `id` is the journal's row id, not part of the stored report."""

    model_config = _STORED

    created_at: str
    eval_file: str  # the first set (the gold set); every set is in eval_sets
    eval_sha256: str
    cases: int
    champion: str
    runs: tuple[ModelRun, ...]
    # Absent from reports written before runs had several sets; left out of the dump when empty.
    eval_sets: tuple[EvalSet, ...] = Field(default=(), exclude_if=lambda sets: not sets)
    case_words: dict[str, int] = Field(default_factory=dict, exclude_if=lambda words: not words)
    decision: Decision | None = None
    notes: tuple[str, ...] = ()
    files: dict[str, str] = Field(default_factory=dict)
    id: int | None = Field(default=None, exclude=True)

    def run_for(self, model: str) -> ModelRun | None:
        return next((run for run in self.runs if run.model == model), None)

    def scores_for(self, model: str) -> Scores | None:
        run = self.run_for(model)
        return run.scores if run else None

    def set_ids(self) -> dict[str, frozenset[str]]:
        """Set name -> its case ids (the policy's strata); empty for a report of one unnamed set."""
        return {s.name: frozenset(s.case_ids) for s in self.eval_sets}

    def runs_on(self, ids: set[str]) -> tuple[ModelRun, ...]:
        return tuple(_subset_run(run, ids) for run in self.runs)

    def sections(self) -> list[tuple[str, tuple[ModelRun, ...]]]:
        """(title, runs) of each table: all sets, each set, each length band ("" for a one-set report)."""
        if not self.eval_sets:  # a report of one set, as written before sets had names
            return [("", self.runs)]
        sections = [(f"Set {s.name} ({len(s.case_ids)} cases)", self.runs_on(set(s.case_ids))) for s in self.eval_sets]
        if len(self.eval_sets) > 1:
            sections.insert(0, (f"All sets together ({self.cases} cases)", self.runs))
        for label, low, high in LENGTH_BANDS:
            ids = {i for i, words in self.case_words.items() if low <= words <= high}
            if ids:
                sections.append((f"All sets, captures of {label} ({len(ids)} cases)", self.runs_on(ids)))
        return sections

    def scores_by_model(self) -> dict[str, Scores]:
        """Model -> scores of every run that was scored: the promotion policy's input."""
        return {run.model: run.scores for run in self.runs if run.scores is not None}

    def markdown(self) -> str:
        if not self.eval_sets:
            header = f"Gold set: `{self.eval_file}` ({self.cases} cases, sha256 {self.eval_sha256[:12]})."
        else:
            header = (
                "Sets: "
                + "; ".join(
                    f"{s.name} `{s.file}` ({len(s.case_ids)} cases, sha256 {s.sha256[:12]})" for s in self.eval_sets
                )
                + "."
            )
        return self._markdown(header, self.sections())

    def _markdown(self, header: str, sections: list[tuple[str, tuple[ModelRun, ...]]]) -> str:
        lines = [f"# Bench run {self.created_at}", "", f"{header} Champion: `{self.champion}`."]
        for title, runs in sections:
            lines += ["", f"## {title}"] if title else []
            lines += ["", markdown_table([_shown_row(run) for run in runs])]
            misses = misses_table(runs)
            if misses:
                lines += ["", "Gold relationships missed, by why (score.RelationshipMisses):", "", misses]
        if self.decision:
            challenger = f"`{self.decision.challenger}`"
            verdict = f"promote {challenger}" if self.decision.promote else f"keep the champion over {challenger}"
            lines += ["", f"Policy: {verdict}: {self.decision.reason}."]
        lines += [f"\nNote: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _shown_row(run: ModelRun) -> dict[str, Any]:
    """run.row() for a table: speed shown as "-" for a subset (a set, a length band), measured whole-run only."""
    row = run.row()
    if not run.generation_seconds:
        row["tokens_per_second"] = None
    return row


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


TABLE_HEADER = (
    "model",
    "parameters",
    "valid JSON %",
    "first-try valid %",
    "entity F1",
    "relationship F1",
    "relaxed rel. F1",
    "tokens/s",
    "p50 s",
    "p95 s",
    "status",
)


def table_cells(row: Mapping[str, Any]) -> list[str]:
    """One row's cells, formatted as in the table header."""
    return [
        str(row["model"]),
        row["parameters"] or "?",
        _pct(row["valid_json"]),
        _pct(row["first_attempt_valid_json"]),
        _num(row["entity_f1"], 3),
        _num(row["relationship_f1"], 3),
        _num(row["relaxed_relationship_f1"], 3),
        _num(row["tokens_per_second"], 1),
        _num(row["p50_s"]),
        _num(row["p95_s"]),
        row["status"],
    ]


def _markdown(header: tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def markdown_table(rows: list[Mapping[str, Any]]) -> str:
    return _markdown(TABLE_HEADER, [table_cells(row) for row in rows])


MISSES_HEADER = ("model", "gold relationships", "found", "other label", "reversed", "endpoint missing", "not linked")


def misses_table(runs: tuple[ModelRun, ...]) -> str:
    """Per scored model: gold relationships, found, and the misses by class ("" when no run has them)."""
    rows = []
    for run in runs:
        if run.scores is None or (misses := run.scores.relationship_misses) is None:
            continue
        counts = run.scores.relationship
        rows.append([str(c) for c in (run.model, counts.tp + counts.fn, counts.tp, *misses.as_list())])
    return _markdown(MISSES_HEADER, rows) if rows else ""


# ---------------------------------------------------------------- candidates


def resolve_candidates(
    settings: Settings, champion: ModelRef, models: list[ModelRef] | None = None
) -> tuple[list[ModelRef], list[str]]:
    """The candidates to bench, in order without duplicates, and notes on what was skipped."""
    if models:  # a decision needs the champion's scores on the same gold set, so it always runs
        return list(dict.fromkeys([champion, *models])), []
    bench = settings.bench
    notes: list[str] = []
    refs = [champion]
    for text in bench.candidates:
        try:
            refs.append(ModelRef.parse(text))
        except MembraneError as exc:
            raise ConfigError(f"bench.candidates: {exc}", key="bench.candidates", hint=exc.hint) from None
    if bench.ollama_pattern:
        try:
            names = get_backend("ollama", settings).list_models()
        except MembraneError as exc:
            notes.append(f"Ollama models matching {bench.ollama_pattern!r} skipped: {exc}")
            log.warning("bench_ollama_unavailable", pattern=bench.ollama_pattern, error=str(exc))
        else:
            refs += [ModelRef("ollama", n) for n in sorted(names) if fnmatch.fnmatchcase(n, bench.ollama_pattern)]
    if bench.include_embedded:
        refs += [ModelRef("embedded", name) for name in get_backend("embedded", settings).list_models()]
    return list(dict.fromkeys(refs)), notes


# ---------------------------------------------------------------- one model


def _unavailable(ref: ModelRef, detail: str, parameters: str = "") -> ModelRun:
    log.warning("bench_model_unavailable", model=str(ref), detail=detail)
    return ModelRun(model=str(ref), status=UNAVAILABLE, detail=detail, parameters=parameters)


def bench_model(settings: Settings, ref: ModelRef, gold: list[GoldCase], progress: Progress | None = None) -> ModelRun:
    """Run one candidate over the gold set; unavailable (not raised) when its backend or model is missing."""
    try:
        recorded = functools.partial(read_recorded_outputs, settings.journal.path)
        backend = get_backend(ref.backend, settings, recorded=recorded)
        check = backend.check(ref.name)
        parameters = backend.parameters(ref.name) if check.ok else ""
    except MembraneError as exc:
        return _unavailable(ref, str(exc))
    if not check.ok:
        return _unavailable(ref, " ".join(part for part in (check.detail, check.fix) if part))
    extractor = Extractor(backend, ref.name, settings)
    cases, latencies = [], []
    tokens, seconds, calls = 0, 0.0, 0
    if progress:
        progress(str(ref), 0, len(gold))
    for done, case in enumerate(gold, start=1):
        started = time.perf_counter()
        try:
            result = extractor.extract(case.text)
        except ExtractionFailed as exc:
            prediction = Prediction(case.id, None, False, error=str(exc))
            calls += len(exc.raw_outputs)
        except (ModelUnavailable, ModelNotFound) as exc:
            # A partial run would be compared with full ones; report the model as unavailable instead.
            return _unavailable(ref, f"after {done - 1} of {len(gold)} cases: {exc}", parameters)
        else:
            prediction = Prediction(case.id, result.extraction, result.first_attempt_valid)
            tokens, seconds, calls = tokens + result.completion_tokens, seconds + result.seconds, calls + result.calls
        latencies.append(time.perf_counter() - started)
        cases.append(score_case(case, replace(prediction, seconds=latencies[-1])))
        if progress:
            progress(str(ref), done, len(gold))
    run = ModelRun(
        model=str(ref),
        status=OK,
        parameters=parameters,
        scores=Scores(cases=tuple(cases)),
        completion_tokens=tokens,
        generation_seconds=seconds,
        calls=calls,
        latencies=tuple(latencies),
    )
    log.info(
        "bench_model_done", model=str(ref), cases=len(cases), **{k: v for k, v in run.row().items() if k in _LOGGED}
    )
    return run


_LOGGED = ("valid_json", "entity_f1", "relationship_f1", "tokens_per_second", "p50_s")


# ---------------------------------------------------------------- the run


def _scored(runs: tuple[ModelRun, ...]) -> dict[str, Scores]:
    """Model -> scores of the runs that ran, in run order (the policy's input)."""
    return {run.model: run.scores for run in runs if run.status == OK and run.scores is not None}


def load_eval_sets(settings: Settings, files: list[Path] | None = None) -> tuple[list[GoldCase], tuple[EvalSet, ...]]:
    """The labelled cases of every set (bench.eval_files, or `files`), relations folded as answers are.

    Set names are the files' stems; a case id in two sets is a ConfigError.
    """
    paths = files or list(settings.bench.eval_files)
    if not paths:
        raise ConfigError("bench.eval_files is empty: name at least the gold set", key="bench.eval_files")
    cases: list[GoldCase] = []
    sets: list[EvalSet] = []
    owner: dict[str, str] = {}
    for path in paths:
        loaded = load_gold(path, settings.extraction.rules())
        name = path.stem if path.stem not in {s.name for s in sets} else str(path)
        for case in loaded:
            if case.id in owner:
                raise ConfigError(f"case id {case.id!r} is in both {owner[case.id]} and {path}", key="bench.eval_files")
            owner[case.id] = str(path)
        sets.append(EvalSet(name=name, file=str(path), sha256=file_sha256(path), case_ids=tuple(c.id for c in loaded)))
        cases += loaded
    return cases, tuple(sets)


def run_bench(
    settings: Settings,
    journal: Journal,
    *,
    models: list[ModelRef] | None = None,
    eval_files: list[Path] | None = None,
    out_dir: Path | None = None,
    progress: Progress | None = None,
) -> BenchReport:
    """Bench every candidate on every evaluation set, write the reports, record the run; promotes nothing."""
    check_policy_settings(settings)
    gold, sets = load_eval_sets(settings, eval_files)
    champion = effective_champion(settings, journal)
    candidates, notes = resolve_candidates(settings, champion, models)
    log.info(
        "bench_started",
        cases=len(gold),
        sets=[s.name for s in sets],
        candidates=[str(c) for c in candidates],
        champion=str(champion),
    )
    runs = tuple(bench_model(settings, ref, gold, progress) for ref in candidates)
    set_ids = {s.name: frozenset(s.case_ids) for s in sets}
    report = BenchReport(
        created_at=iso_utc_seconds(),
        eval_file=sets[0].file,
        eval_sha256=sets[0].sha256,
        cases=len(gold),
        champion=str(champion),
        runs=runs,
        eval_sets=sets,
        case_words={c.id: len(c.text.split()) for c in gold},
        decision=choose_challenger(_scored(runs), str(champion), settings, sets=set_ids),
        notes=tuple(notes),
    )
    report = write_reports(report, out_dir or settings.bench.out_dir)
    report = report.model_copy(update={"id": journal.models.record_bench_run(report.model_dump(mode="json"))})
    log.info(
        "bench_done",
        run_id=report.id,
        files=dict(report.files),
        promote=bool(report.decision and report.decision.promote),
    )
    return report


def last_report(journal: Journal) -> BenchReport | None:
    """The newest bench run recorded in the journal (any version's report loads), or None before the first."""
    runs = journal.models.bench_runs(1)
    return BenchReport.model_validate({**runs[0]["report"], "id": runs[0]["id"]}) if runs else None


# ---------------------------------------------------------------- files


def write_reports(report: BenchReport, out_dir: Path) -> BenchReport:
    """bench-<time>.json, .md and .png (the plot needs the `plot` extra) in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / ("bench-" + report.created_at.replace(":", "").replace("-", ""))
    files = {"json": str(stem.with_suffix(".json")), "markdown": str(stem.with_suffix(".md"))}
    notes = list(report.notes)
    try:
        plot_path = plot(report, stem.with_suffix(".png"))
    except ImportError:
        notes.append("No plot: matplotlib is not installed (pip install 'membrane[plot]').")
    else:
        if plot_path is not None:
            files["plot"] = str(plot_path)
    report = report.model_copy(update={"files": files, "notes": tuple(notes)})
    Path(files["json"]).write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    Path(files["markdown"]).write_text(report.markdown(), encoding="utf-8")
    return report


def plot(report: BenchReport, path: Path) -> Path | None:
    """F1 against tokens per second, one labelled point pair per model; None with nothing to plot."""
    rows = [run.row() for run in report.runs if run.status == OK]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on a server; must precede pyplot
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    speed = [r["tokens_per_second"] for r in rows]
    axes.scatter(speed, [r["entity_f1"] for r in rows], marker="o", label="entity F1")
    axes.scatter(speed, [r["relationship_f1"] for r in rows], marker="s", label="relationship F1")
    for row in rows:
        axes.annotate(
            row["model"],
            (row["tokens_per_second"], row["entity_f1"]),
            fontsize=8,
            xytext=(4, 4),
            textcoords="offset points",
        )
    axes.set_xlabel("completion tokens per second of model-call time")
    axes.set_ylabel("F1 (micro)")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(f"{report.cases} labelled cases, {report.created_at}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


# ---------------------------------------------------------------- schedule


def run_scheduled_bench(settings: Settings, journal: Journal, is_idle: Callable[[], bool]) -> BenchReport | None:
    """One scheduled run: skipped (None) while busy when only_when_idle; auto-promotes when configured."""
    if settings.bench.only_when_idle and not is_idle():
        log.info("bench_skipped_busy")
        return None
    report = run_bench(settings, journal)
    decision = report.decision
    if settings.bench.auto_promote and decision is not None and decision.promote:
        requeued = apply_decision(
            decision, settings, journal, reason=f"scheduled bench run {report.id}: {decision.reason}"
        )
        log.info("bench_auto_promoted", model=decision.challenger, run_id=report.id, requeued=requeued)
    return report


class BenchScheduler:
    """Scheduled re-benchmarks inside the daemon (APScheduler 3.x BackgroundScheduler).

    Cron from bench.schedule, else an interval of bench.interval_hours. One run
    at a time (max_instances=1); runs missed while one was going, or while the
    process was busy, are coalesced into one.
    """

    JOB_ID = "membrane-bench"

    def __init__(self, settings: Settings, journal: Journal, is_idle: Callable[[], bool]) -> None:
        self.settings = settings
        self.journal = journal
        self.is_idle = is_idle
        self.last_report: BenchReport | None = None
        self.runs = 0  # job executions, including skipped ones
        self.finished = threading.Event()  # set after each execution; tests and shutdown wait on it
        self._scheduler: Any = None

    def trigger(self) -> Any:
        """The APScheduler trigger for the configured schedule; ConfigError when there is none."""
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        bench = self.settings.bench
        if bench.schedule:
            try:
                return CronTrigger.from_crontab(bench.schedule)
            except ValueError as exc:
                raise ConfigError(f"bench.schedule = {bench.schedule!r}: {exc}", key="bench.schedule") from None
        if bench.interval_hours > 0:
            return IntervalTrigger(hours=bench.interval_hours)
        raise ConfigError("no bench schedule: set bench.schedule or bench.interval_hours", key="bench.schedule")

    def start(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(timezone=UTC)
        job = scheduler.add_job(
            self._run,
            self.trigger(),
            id=self.JOB_ID,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,  # a late run still runs (once, coalesced)
        )
        scheduler.start()
        self._scheduler = scheduler
        log.info("bench_scheduler_started", next_run=str(job.next_run_time))

    @property
    def job(self) -> Any:
        """The APScheduler job (trigger, next_run_time, max_instances, coalesce), or None when stopped."""
        return self._scheduler.get_job(self.JOB_ID) if self._scheduler is not None else None

    def run_now(self) -> None:
        """Ask the scheduler to run the job at once (in its thread, under the same limits)."""
        if self._scheduler is None:
            raise MembraneError("the bench scheduler is not started")
        self.finished.clear()
        self._scheduler.modify_job(self.JOB_ID, next_run_time=datetime.now(UTC))

    def shutdown(self, wait: bool = True) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=wait)
            self._scheduler = None
            log.info("bench_scheduler_stopped")

    def _run(self) -> None:
        try:
            self.last_report = run_scheduled_bench(self.settings, self.journal, self.is_idle) or self.last_report
        except MembraneError as exc:  # the next scheduled run may succeed; never kill the scheduler
            log.error("bench_failed", error=str(exc), hint=exc.hint)
        finally:
            self.runs += 1
            self.finished.set()
