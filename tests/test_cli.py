"""The `membrane` command surface."""

from __future__ import annotations

from click.testing import CliRunner

from membrane.cli import main

DESIGN_COMMANDS = [
    "run", "ingest", "extract", "status", "doctor", "migrate", "sync", "export",
    "bench", "score", "models", "promote", "rollback", "train",
]


def test_help_lists_every_command() -> None:
    """`membrane --help` names every command of DESIGN.md."""
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in DESIGN_COMMANDS:
        assert f"  {name} " in result.output, name


def test_version() -> None:
    """--version prints the package version."""
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert "0.1.0" in result.output
