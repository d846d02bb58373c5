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


def test_train_has_an_option_for_every_train_key() -> None:
    """`membrane train` overrides every [train] key but work_dir, with the key's choices for a Literal."""
    from membrane.config import TrainSettings

    params = {p.name: p for p in main.commands["train"].params}
    assert set(TrainSettings.model_fields) - {"work_dir", "distill_from"} <= set(params)
    assert "work_dir" not in params and params["distill"].opts == ["--distill-from"]
    assert params["learning_rate"].opts == ["--lr"] and params["models_dir"].opts == ["--out"]
    assert params["merged"].type.choices == ("f16", "q8_0")  # type: ignore[attr-defined]
