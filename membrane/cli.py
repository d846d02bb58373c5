"""The `membrane` command. The only module that prints.

Exit codes: 0 success, 1 work failed (a check, a capture), 2 bad usage or
configuration. Each command loads settings, configures logging, then calls
into the library; MembraneError subclasses are turned into one clear line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from membrane.config import Settings, load_settings
from membrane.errors import ConfigError, MembraneError
from membrane.logs import configure_logging

F = TypeVar("F", bound=Callable[..., Any])

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
    try:
        return (settings.neo4j_password(),)
    except ConfigError:
        return ()


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"membrane: {message}", err=True)
    sys.exit(code)


def handle_errors(func: F) -> F:
    """Turn MembraneError into one line on stderr and the documented exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            fail(f"configuration error: {exc}", EXIT_USAGE)
        except MembraneError as exc:
            hint = f"\n  hint: {exc.hint}" if exc.hint else ""
            fail(f"{exc}{hint}", EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


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


def not_built(name: str, issue: str) -> Callable[[], NoReturn]:
    def command() -> NoReturn:
        fail(f"'{name}' is not built yet ({issue})", EXIT_USAGE)

    return command


# ---------------------------------------------------------------- commands
# Each command below is a thin shell over the library. Commands not built yet
# are registered through not_built() so `membrane --help` lists them all.

_PENDING = {
    "run": ("Run the daemon in the foreground: watch the inbox, extract, project.", "issue 5"),
    "ingest": ("Process the given capture files now and exit (1 if any failed).", "issue 5"),
    "extract": ("Extract entities and relationships from TEXT (or - for stdin) and print JSON.", "issue 3"),
    "status": ("Counts per state, recent errors, active model, projection lag.", "issue 5"),
    "migrate": ("Apply pending Neo4j migrations.", "issue 4"),
    "sync": ("Project the journal into Neo4j (also after a wiped database).", "issue 5"),
    "export": ("Write the graph out from the journal (cypher or jsonl).", "issue 5"),
    "bench": ("Benchmark candidate models on the gold set.", "issue 6"),
    "score": ("Score predictions against a gold set: membrane score GOLD PRED.", "issue 6"),
    "models": ("Champion, candidates and their last scores.", "issue 6"),
    "promote": ("Make NAME the active model (--force skips the policy).", "issue 6"),
    "rollback": ("Restore the previous champion.", "issue 6"),
    "train": ("Fine-tune a small model with LoRA and register it as a candidate.", "not planned yet"),
}

for _name, (_help, _issue) in _PENDING.items():
    main.command(
        _name,
        help=f"{_help} [not built yet]",
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )(not_built(_name, _issue))


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


if __name__ == "__main__":  # pragma: no cover
    main()
