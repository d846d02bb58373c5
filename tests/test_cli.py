"""The `membrane` command surface."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from membrane.cli import main

ROOT = Path(__file__).resolve().parents[1]

# Every command `membrane` has, in README.md's order; a command added or removed changes this list.
COMMANDS = [
    "doctor",
    "extract",
    "migrate",
    "run",
    "ingest",
    "status",
    "show",
    "facts",
    "search",
    "export",
    "forget",
    "sync",
    "bench",
    "score",
    "models",
    "promote",
    "rollback",
    "train",
    "register",
    "anchors",
    "mcp",
]


def test_the_cli_has_exactly_the_listed_commands() -> None:
    """`membrane` registers exactly COMMANDS, and `membrane --help` names each of them."""
    assert sorted(main.commands) == sorted(COMMANDS)
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f"  {name} " in result.output, name


def test_readme_documents_every_command() -> None:
    """README.md's command table has one row per command, in COMMANDS' order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.findall(r"^\| `membrane (\w+)", readme, flags=re.MULTILINE) == COMMANDS


def test_version() -> None:
    """--version prints the package version."""
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert "0.1.0" in result.output


def test_train_has_an_option_for_every_train_key() -> None:
    """`membrane train` overrides every [train] key but work_dir, with the key's choices for a Literal."""
    from membrane.config import TrainSettings

    params = {p.name: p for p in main.commands["train"].params}
    assert set(TrainSettings.model_fields) - {"work_dir", "distill_from"} <= set(params)
    assert "work_dir" not in params and params["distill"].opts == ["--distill-from"]
    assert params["learning_rate"].opts == ["--lr"] and params["models_dir"].opts == ["--out"]
    assert params["merged"].type.choices == ("f16", "q8_0")  # type: ignore[attr-defined]
