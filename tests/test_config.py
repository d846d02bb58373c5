"""Settings: the documented file, env overrides, and errors that name their key."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from membrane.cli import main
from membrane.config import Settings, load_settings
from membrane.errors import ConfigError
from membrane.records import NO_GUARDS, DecodingGuards

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = ROOT / "config" / "membrane.toml"


def test_shipped_config_states_the_code_defaults() -> None:
    """config/membrane.toml shows every default exactly as the code has it."""
    assert load_settings(CONFIG_FILE, environ={}) == Settings()


def test_shipped_config_documents_every_key() -> None:
    """Every settings field appears in config/membrane.toml (set or commented)."""
    text = CONFIG_FILE.read_text(encoding="utf-8")
    for section_name, section in Settings.model_fields.items():
        assert f"[{section_name}]" in text
        for key in section.annotation.model_fields:  # type: ignore[union-attr]
            assert f"{key} =" in text or f"[{section_name}.{key}" in text, f"{section_name}.{key} undocumented"


def test_env_overrides_a_key(tmp_path: Path) -> None:
    """MEMBRANE_<SECTION>__<KEY> overrides the file and is coerced to the key's type."""
    settings = load_settings(
        CONFIG_FILE,
        environ={"MEMBRANE_NEO4J__URI": "bolt://127.0.0.1:7999", "MEMBRANE_DAEMON__CONCURRENCY": "3"},
    )
    assert settings.neo4j.uri == "bolt://127.0.0.1:7999"
    assert settings.daemon.concurrency == 3


def test_env_lists_as_json() -> None:
    """A list-valued key can be given as JSON in the environment."""
    settings = load_settings(CONFIG_FILE, environ={"MEMBRANE_BENCH__CANDIDATES": '["ollama:qwen2.5:1.5b"]'})
    assert settings.bench.candidates == ("ollama:qwen2.5:1.5b",)


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('[daemon]\nconcurrency = "many"\n', "daemon.concurrency", "'many'"),
        ('[neo4j]\nuri = "http://localhost:7474"\n', "neo4j.uri", "bolt://"),
        ("[inbox]\nstable_secnds = 2\n", "inbox.stable_secnds", "unknown key"),
        ("[nosuchsection]\nx = 1\n", "nosuchsection", "unknown key"),
        ('[model]\nbackend = "vllm"\n', "model.backend", "'openai'"),
    ],
)
def test_bad_value_names_key_value_and_expectation(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    """A bad or unknown key is reported with its dotted name and what was wrong."""
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.key == key
    assert key in str(caught.value)
    assert fragment in str(caught.value)


def test_bad_env_value_names_the_variable() -> None:
    """An error from the environment says which variable it came from."""
    with pytest.raises(ConfigError, match="MEMBRANE_INBOX__MAX_BYTES"):
        load_settings(CONFIG_FILE, environ={"MEMBRANE_INBOX__MAX_BYTES": "-5"})


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not TOML is reported as such, with its path."""
    path = tmp_path / "broken.toml"
    path.write_text("[inbox\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path, environ={})


def test_password_comes_from_file(tmp_path: Path) -> None:
    """neo4j.password_file wins over an inline password."""
    secret = tmp_path / "pw"
    secret.write_text("from-file\n", encoding="utf-8")
    settings = load_settings(
        CONFIG_FILE,
        environ={"MEMBRANE_NEO4J__PASSWORD": "inline", "MEMBRANE_NEO4J__PASSWORD_FILE": str(secret)},
    )
    assert settings.neo4j_password() == "from-file"


def test_password_comes_from_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under systemd, $CREDENTIALS_DIRECTORY/neo4j-password is used."""
    (tmp_path / "neo4j-password").write_text("cred\n", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert Settings().neo4j_password() == "cred"


def test_mcp_token_comes_from_its_file_or_the_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mcp.token_file, else $CREDENTIALS_DIRECTORY/mcp-token; none is None; a short token or an unreadable
    file is a ConfigError that never shows the token."""
    assert Settings().mcp_token() is None
    (tmp_path / "mcp-token").write_text("credential-token-0123456789\n", encoding="utf-8")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert Settings().mcp_token() == "credential-token-0123456789"
    short = tmp_path / "short"
    short.write_text("tooshort", encoding="utf-8")
    with pytest.raises(ConfigError, match="at least 16") as caught:
        Settings.model_validate({"mcp": {"token_file": short}}).mcp_token()
    assert "tooshort" not in str(caught.value)
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.model_validate({"mcp": {"token_file": tmp_path / "missing"}}).mcp_token()


def test_only_loopback_mcp_hosts_count_as_local() -> None:
    """127.0.0.1, ::1 and localhost are loopback; a LAN address, 0.0.0.0 or a host name are not."""
    local = [Settings.model_validate({"mcp": {"host": h}}).mcp.loopback for h in ("127.0.0.1", "::1", "localhost")]
    remote = [Settings.model_validate({"mcp": {"host": h}}).mcp.loopback for h in ("0.0.0.0", "192.168.1.5", "nas")]
    assert all(local) and not any(remote)


def test_password_is_hidden_in_errors_and_repr() -> None:
    """The password never shows in a settings repr or a config error."""
    settings = load_settings(CONFIG_FILE, environ={"MEMBRANE_NEO4J__PASSWORD": "s3cret-value"})
    assert "s3cret-value" not in repr(settings)
    with pytest.raises(ConfigError) as caught:
        load_settings(CONFIG_FILE, environ={"MEMBRANE_NEO4J__PASSWORD": "s3cret-value", "MEMBRANE_NEO4J__URI": "x"})
    assert "s3cret-value" not in str(caught.value)


def test_api_key_comes_from_file_then_credential_then_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """model.openai_api_key_file wins over the openai-api-key credential, which wins over the inline key."""
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n", encoding="utf-8")
    (tmp_path / "openai-api-key").write_text("from-credential\n", encoding="utf-8")
    inline = {"MEMBRANE_MODEL__OPENAI_API_KEY": "inline"}
    assert load_settings(CONFIG_FILE, environ=inline).openai_api_key() == "inline"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_settings(CONFIG_FILE, environ=inline).openai_api_key() == "from-credential"
    with_file = {**inline, "MEMBRANE_MODEL__OPENAI_API_KEY_FILE": str(key_file)}
    assert load_settings(CONFIG_FILE, environ=with_file).openai_api_key() == "from-file"
    missing = load_settings(CONFIG_FILE, environ={"MEMBRANE_MODEL__OPENAI_API_KEY_FILE": str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match="model.openai_api_key_file") as caught:
        missing.openai_api_key()
    assert caught.value.key == "model.openai_api_key_file"


def test_api_key_is_hidden_in_errors_and_repr() -> None:
    """The API key never shows in a settings repr or a config error about it."""
    settings = load_settings(CONFIG_FILE, environ={"MEMBRANE_MODEL__OPENAI_API_KEY": "sk-s3cret-value"})
    assert "sk-s3cret-value" not in repr(settings)
    with pytest.raises(ConfigError, match="model.openai_api_key = <hidden>") as caught:
        load_settings(CONFIG_FILE, environ={"MEMBRANE_MODEL__OPENAI_API_KEY": '["sk-s3cret-value"]'})
    assert "sk-s3cret-value" not in str(caught.value)


def test_openai_base_url_must_be_http() -> None:
    """model.openai_base_url must be an http(s) URL; a trailing slash is dropped."""
    with pytest.raises(ConfigError, match="model.openai_base_url"):
        load_settings(CONFIG_FILE, environ={"MEMBRANE_MODEL__OPENAI_BASE_URL": "127.0.0.1:8000/v1"})
    settings = load_settings(CONFIG_FILE, environ={"MEMBRANE_MODEL__OPENAI_BASE_URL": "http://gpu:8000/v1/"})
    assert settings.model.openai_base_url == "http://gpu:8000/v1"


def test_cli_exits_2_on_bad_config(tmp_path: Path) -> None:
    """Any command given a bad config exits 2 with the key in the message."""
    path = tmp_path / "bad.toml"
    path.write_text("[journal]\npaht = 'x'\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["--config", str(path), "doctor"])
    assert result.exit_code == 2
    assert "journal.paht" in result.output


def test_config_file_is_valid_toml_with_all_sections() -> None:
    """The shipped file parses and has one table per settings section."""
    data = tomllib.loads(CONFIG_FILE.read_text(encoding="utf-8"))
    assert set(data) == set(Settings.model_fields)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[extraction]\nrelation_vocabulary = ["USES"]\nrelation_synonyms = { utilises = "RUNS_ON" }\n', "RUNS_ON"),
        ('[extraction]\nrelation_synonyms = { utilises = "123" }\n', "UPPER_SNAKE_CASE"),
    ],
)
def test_bad_relation_synonyms_are_config_errors(tmp_path: Path, text: str, fragment: str) -> None:
    """A synonym outside the vocabulary, or one that cannot be a relation type, is named at load time."""
    path = tmp_path / "synonyms.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert caught.value.key == "extraction.relation_synonyms"
    assert fragment in str(caught.value)


def test_relation_synonyms_are_normalised() -> None:
    """Synonyms in any spelling become UPPER_SNAKE_CASE on both sides."""
    settings = load_settings(
        CONFIG_FILE, environ={"MEMBRANE_EXTRACTION__RELATION_SYNONYMS": '{"runs on": "deployed-on"}'}
    )
    assert settings.extraction.relation_synonyms == {"RUNS_ON": "DEPLOYED_ON"}
    assert settings.extraction.rules().canonical_relation("runs on") == "DEPLOYED_ON"


def test_the_configured_guards_cross_to_the_child_whole() -> None:
    """extraction.endpoints and extraction.loops travel as one record, and the child reads back what was sent;
    a request that names no guards gets none."""
    settings = load_settings(
        CONFIG_FILE, environ={"MEMBRANE_EXTRACTION__LOOPS": "end_list", "MEMBRANE_EXTRACTION__ENDPOINTS": "entities"}
    )
    guards = settings.extraction.guards()
    assert guards == DecodingGuards(endpoints="entities", loops="end_list")
    assert DecodingGuards.from_wire(json.loads(json.dumps(asdict(guards)))) == guards
    assert DecodingGuards.from_wire({"loops": "end_list"}) == DecodingGuards(loops="end_list")
    assert DecodingGuards.from_wire(None) == NO_GUARDS == load_settings(CONFIG_FILE, environ={}).extraction.guards()


def test_a_guard_value_the_child_does_not_know_is_refused_not_dropped() -> None:
    """A misspelt guard would otherwise decode without it, silently; the settings and the wire both refuse it."""
    with pytest.raises(ValueError, match="end_list"):
        DecodingGuards.from_wire({"loops": "endlist"})
    with pytest.raises(ConfigError, match="loops"):
        load_settings(CONFIG_FILE, environ={"MEMBRANE_EXTRACTION__LOOPS": "endlist"})
