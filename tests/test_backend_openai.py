"""The openai backend against real OpenAI-compatible servers: llama-cpp-python's own
server (SmolLM2 behind an API key, started per session; a second one per test where
the test kills it) and the real Ollama's /v1 (scripts/ollama-local). No fakes.

What each server can show: llama-cpp-python's server takes json_object with a
schema beside it and refuses json_schema (HTTP 500), checks an API key, and can be
killed mid-request; Ollama's /v1 takes json_schema (strict), answers 404 for a
model it lacks, and stops generating when the client gives up (a timeout).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import OllamaServer

from membrane.backends import GenerationRequest
from membrane.backends.openai import OpenAIBackend
from membrane.bench import last_report
from membrane.cli import main
from membrane.config import Settings
from membrane.errors import ConfigError, ExtractionFailed, ModelNotFound, ModelUnavailable
from membrane.extract import build_extractor, parse_output
from membrane.journal import Journal
from membrane.pipeline import Pipeline
from membrane.schema import ExtractionRules
from tests.support.openai_servers import LlamaCppServer, free_port
from tests.support.pipeline import ROOT, membrane_env

NOTE = "Alice deployed the billing API on k3s."
GOLD_FILE = ROOT / "config" / "eval" / "gold.jsonl"

OpenAISettings = Callable[..., Settings]


@pytest.fixture
def openai_settings(make_settings: Callable[..., Settings]) -> OpenAISettings:
    """Settings for the openai backend at a base URL, with a small answer budget."""

    def build(base_url: str, name: str, *, extraction: dict[str, Any] | None = None, **model: Any) -> Settings:
        return make_settings(
            model={
                "backend": "openai",
                "openai_base_url": base_url,
                "name": name,
                "timeout_s": 300.0,
                "num_predict": 128,
                **model,
            },
            extraction={"max_repairs": 1, **(extraction or {})},
        )

    return build


@pytest.fixture
def llama_cpp(llama_cpp_server: LlamaCppServer, openai_settings: OpenAISettings) -> OpenAISettings:
    """Settings for the session's llama-cpp-python server: its key, json_object with the schema."""

    def build(**model: Any) -> Settings:
        options = {"openai_api_key": llama_cpp_server.api_key, "openai_response_format": "json_object", **model}
        return openai_settings(llama_cpp_server.base_url, llama_cpp_server.alias, **options)

    return build


def ollama_v1(server: OllamaServer) -> str:
    return f"{server.host}/v1"


def request(model: str, content: str = NOTE, **fields: Any) -> GenerationRequest:
    options = {"schema": None, "num_predict": 64, "num_ctx": 2048, **fields}
    return GenerationRequest(model, ({"role": "user", "content": content},), **options)


def gold_subset(path: Path, ids: list[str]) -> Path:
    lines = [line for line in GOLD_FILE.read_text(encoding="utf-8").splitlines() if json.loads(line)["id"] in ids]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- llama-cpp-python's server


@pytest.mark.model
@pytest.mark.slow
def test_llama_cpp_server_answers_within_the_schema(llama_cpp: OpenAISettings) -> None:
    """json_object with the schema beside it constrains SmolLM2: the first answer is a valid extraction."""
    result = build_extractor(llama_cpp()).extract(NOTE)
    assert result.first_attempt_valid and result.calls == 1 and result.backend == "openai"
    assert set(json.loads(result.raw_outputs[0])) == {"entities", "relationships"}
    assert 0 < result.completion_tokens <= 128 and result.prompt_tokens > 100


@pytest.mark.model
def test_llama_cpp_server_refuses_json_schema_as_a_config_error(llama_cpp: OpenAISettings) -> None:
    """llama-cpp-python's server answers a json_schema response_format with HTTP 500; that is a ConfigError naming
    the key, and the doctor check fails with the setting that works."""
    settings = llama_cpp(openai_response_format="json_schema")
    backend = OpenAIBackend(settings)
    with pytest.raises(ConfigError, match="refused response_format json_schema") as caught:
        build_extractor(settings).extract(NOTE)
    assert caught.value.key == "model.openai_response_format" and "json_object" in caught.value.hint
    check = backend.check(settings.model.name)
    assert not check.ok and "json_object" in check.fix
    backend.close()


@pytest.mark.model
def test_wrong_or_missing_key_is_retryable_and_never_shown(
    llama_cpp: OpenAISettings, llama_cpp_server: LlamaCppServer
) -> None:
    """HTTP 401 for a wrong or missing key is ModelUnavailable (captures wait for the fix), worded without the key;
    the doctor check says where the key goes."""
    wrong = "not-the-key-" + llama_cpp_server.api_key[:4]
    backend = OpenAIBackend(llama_cpp(openai_api_key=wrong))
    with pytest.raises(ModelUnavailable, match=r"refused the API key: Invalid API key \(HTTP 401\)") as caught:
        backend.generate(request(llama_cpp_server.alias))
    assert wrong not in str(caught.value) and "openai_api_key_file" in caught.value.hint
    check = backend.check(llama_cpp_server.alias)
    assert not check.ok and "openai_api_key_file" in check.fix and wrong not in check.detail
    keyless = OpenAIBackend(llama_cpp(openai_api_key=""))
    with pytest.raises(ModelUnavailable, match="wants an API key"):
        keyless.list_models()
    backend.close()
    keyless.close()


@pytest.mark.model
@pytest.mark.slow
def test_server_ignoring_the_schema_goes_through_the_repair_loop(llama_cpp: OpenAISettings) -> None:
    """With no response_format the server decodes freely, as one that ignores the field does: SmolLM2's first
    answer is invalid, the repair turn is sent, and the result is bounded (a valid extraction or ExtractionFailed
    with every raw answer), never another error."""
    settings = llama_cpp(openai_response_format="none")
    try:
        result = build_extractor(settings).extract(NOTE)
    except ExtractionFailed as exc:
        assert len(exc.raw_outputs) == 2 and len(exc.errors) == 2 and exc.model == "openai:smollm2-135m"
    else:
        assert result.calls == 2 and not result.first_attempt_valid and len(result.errors) == 1


@pytest.mark.model
@pytest.mark.slow
def test_server_going_away_mid_run_leaves_the_capture_queued(
    make_settings: Callable[..., Settings], tiny_model_path: Path, tmp_path: Path
) -> None:
    """A server killed while it generates fails the call as ModelUnavailable: the capture goes back to queued
    (not failed), and once the server is back on its port the same pipeline carries it to done."""
    server = LlamaCppServer(tiny_model_path, "smollm2-135m", tmp_path / "server.log").start()
    settings = make_settings(
        model={
            "backend": "openai",
            "openai_base_url": server.base_url,
            "name": "smollm2-135m",
            "openai_response_format": "json_object",
            "num_predict": 256,
            "timeout_s": 300.0,
        },
        daemon={"retry_base_s": 0.05, "retry_max_s": 0.1},
    )
    settings.inbox.path.mkdir(parents=True)
    (settings.inbox.path / "note.txt").write_text(NOTE + "\n", encoding="utf-8")
    outcomes: list[Any] = []
    try:
        with Journal(settings.journal.path) as journal:
            pipeline = Pipeline(settings, journal)
            assert pipeline.admit(settings.inbox.path / "note.txt").state == "waiting"
            worker = threading.Thread(target=lambda: outcomes.append(pipeline.work_once("w0")))
            worker.start()
            time.sleep(1.5)  # the request is in flight: the prompt alone takes longer than this
            server.stop(kill=True)
            worker.join(timeout=60)
            assert outcomes and outcomes[0].state == "queued" and outcomes[0].stage == "extract", outcomes
            assert "connection to" in outcomes[0].reason or "cannot connect" in outcomes[0].reason
            assert journal.status.counts()["queued"] == 1 and journal.status.counts()["failed"] == 0
            server.start()
            time.sleep(0.2)  # past the retry delay
            finished = pipeline.work_once("w0")
            assert finished is not None and finished.state == "done", finished
    finally:
        server.stop()


# ---------------------------------------------------------------- Ollama's /v1


@pytest.mark.ollama
@pytest.mark.slow
def test_ollama_v1_takes_the_strict_json_schema(ollama_server: OllamaServer, openai_settings: OpenAISettings) -> None:
    """Ollama's /v1 enforces the json_schema response_format: SmolLM2's first answer is a valid extraction."""
    settings = openai_settings(ollama_v1(ollama_server), ollama_server.smollm2, openai_strict=True)
    result = build_extractor(settings).extract(NOTE)
    assert result.first_attempt_valid and result.calls == 1
    parse_output(result.raw_outputs[0], ExtractionRules())


@pytest.mark.ollama
def test_ollama_v1_missing_model_is_model_not_found(
    ollama_server: OllamaServer, openai_settings: OpenAISettings
) -> None:
    """Ollama's 404 for a model it lacks is a permanent ModelNotFound; the doctor check lists what it serves."""
    settings = openai_settings(ollama_v1(ollama_server), "missing:1b")
    with pytest.raises(ModelNotFound, match=r"has no model 'missing:1b'.*\(HTTP 404\)"):
        build_extractor(settings).extract(NOTE)
    check = OpenAIBackend(settings).check("missing:1b")
    assert not check.ok and f"{ollama_server.smollm2}:latest" in check.detail and "model.name" in check.fix


@pytest.mark.ollama
def test_ollama_v1_timeout_is_retryable(ollama_server: OllamaServer, openai_settings: OpenAISettings) -> None:
    """A timeout far below the generation's time raises ModelUnavailable with retry_after the timeout."""
    warm = OpenAIBackend(openai_settings(ollama_v1(ollama_server), ollama_server.gemma))
    warm.generate(request(ollama_server.gemma, "Say hi.", num_predict=1))  # loaded: what times out is generation
    warm.close()
    backend = OpenAIBackend(openai_settings(ollama_v1(ollama_server), ollama_server.gemma, timeout_s=3.0))
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="did not answer within 3 s") as caught:
        backend.generate(request(ollama_server.gemma, "Write a long story about a cluster.", num_predict=2000))
    assert caught.value.retry_after == 3.0 and time.monotonic() - started < 15
    backend.close()


@pytest.mark.ollama
def test_base_url_without_v1_is_a_config_error(ollama_server: OllamaServer, openai_settings: OpenAISettings) -> None:
    """A base URL that is the server's root (no /v1) has no model listing: a ConfigError on the key, and the check
    says the URL usually ends in /v1."""
    backend = OpenAIBackend(openai_settings(ollama_server.host, ollama_server.smollm2))
    with pytest.raises(ConfigError, match="no OpenAI-compatible API") as caught:
        backend.list_models()
    assert caught.value.key == "model.openai_base_url"
    check = backend.check(ollama_server.smollm2)
    assert not check.ok and "/v1" in check.fix
    backend.close()


def test_server_not_listening_is_retryable(openai_settings: OpenAISettings) -> None:
    """A base URL where nothing listens raises ModelUnavailable; the doctor check says to start the server."""
    backend = OpenAIBackend(openai_settings(f"http://127.0.0.1:{free_port()}/v1", "any", timeout_s=2.0))
    with pytest.raises(ModelUnavailable, match="cannot connect"):
        backend.generate(request("any"))
    down = backend.check("any")
    assert not down.ok and "does not answer" in down.detail and "start the server" in down.fix
    backend.close()


# ---------------------------------------------------------------- doctor and bench, both servers


def _config(
    tmp_path: Path, model: dict[str, Any], file_name: str = "membrane.toml", **sections: dict[str, Any]
) -> Path:
    inbox = tmp_path / "inbox"
    inbox.mkdir(exist_ok=True)
    base: dict[str, dict[str, Any]] = {
        "inbox": {"path": str(inbox)},
        "journal": {"path": str(tmp_path / "journal.sqlite3")},
        "model": {"backend": "openai", "num_predict": 96, "timeout_s": 300.0, **model},
        "extraction": {"max_repairs": 1},
        "bench": {"out_dir": str(tmp_path / "out"), "include_embedded": False},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    lines = []
    for section, values in base.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    config = tmp_path / file_name
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def _model_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.split()[1:2] == ["model"]]
    assert len(lines) == 1, output
    return lines[0]


def _bench(config: Path, model: str, tmp_path: Path) -> Any:
    result = CliRunner().invoke(main, ["--config", str(config), "bench", "--models", model])
    assert result.exit_code == 0, result.output
    with Journal(tmp_path / "journal.sqlite3") as journal:
        report = last_report(journal)
    run = report.run_for(model) if report else None
    assert run is not None and run.status == "ok" and run.scores is not None and len(run.scores.cases) == 1, run
    return run


@pytest.mark.model
@pytest.mark.slow
def test_doctor_and_bench_with_llama_cpp_server(llama_cpp_server: LlamaCppServer, tmp_path: Path) -> None:
    """`membrane doctor` passes with the key in a file, fails with the fix for a wrong one, and
    `membrane bench --models openai:smollm2-135m` runs the server's model on a gold case."""
    key_file = tmp_path / "openai-api-key"
    key_file.write_text(llama_cpp_server.api_key + "\n", encoding="utf-8")
    model = {
        "name": llama_cpp_server.alias,
        "openai_base_url": llama_cpp_server.base_url,
        "openai_response_format": "json_object",
        "openai_api_key_file": str(key_file),
    }
    gold = gold_subset(tmp_path / "gold.jsonl", ["g002"])
    config = _config(tmp_path, model, bench={"eval_files": [str(gold)]})
    doctor = CliRunner().invoke(main, ["--config", str(config), "doctor"])
    line = _model_line(doctor.output)
    assert line.startswith("ok") and llama_cpp_server.base_url in line and "json_object" in line, doctor.output
    key_file.write_text("wrong\n", encoding="utf-8")
    refused = CliRunner().invoke(main, ["--config", str(config), "doctor"])
    assert refused.exit_code == 1 and "fix: put the server's key in model.openai_api_key_file" in refused.output
    key_file.write_text(llama_cpp_server.api_key, encoding="utf-8")
    run = _bench(config, f"openai:{llama_cpp_server.alias}", tmp_path)
    assert run.row()["tokens_per_second"] > 0


@pytest.mark.ollama
@pytest.mark.slow
def test_doctor_and_bench_with_ollama_v1(ollama_server: OllamaServer, tmp_path: Path) -> None:
    """`membrane doctor` passes for a model Ollama's /v1 serves and fails for one it lacks, and
    `membrane bench --models openai:smollm2-135m` runs it on a gold case."""
    gold = gold_subset(tmp_path / "gold.jsonl", ["g002"])
    model = {"name": ollama_server.smollm2, "openai_base_url": ollama_v1(ollama_server)}
    config = _config(tmp_path, model, bench={"eval_files": [str(gold)]})
    doctor = CliRunner().invoke(main, ["--config", str(config), "doctor"])
    assert doctor.exit_code == 0, doctor.output
    assert _model_line(doctor.output).startswith("ok") and "json_schema" in doctor.output
    missing = _config(tmp_path, {**model, "name": "no-such-model:1b"}, "missing.toml")
    failed = CliRunner().invoke(main, ["--config", str(missing), "doctor"])
    assert failed.exit_code == 1 and "does not serve 'no-such-model:1b'" in _model_line(failed.output)
    _bench(config, f"openai:{ollama_server.smollm2}", tmp_path)


@pytest.mark.model
@pytest.mark.slow
def test_api_key_appears_in_no_output(llama_cpp_server: LlamaCppServer, tmp_path: Path) -> None:
    """With the key written into the config (the worst place for it), `doctor` and `extract` at debug level never
    print or log it, with the right key and with a wrong one."""
    for number, key in enumerate((llama_cpp_server.api_key, llama_cpp_server.api_key[::-1])):
        model = {
            "name": llama_cpp_server.alias,
            "openai_base_url": llama_cpp_server.base_url,
            "openai_response_format": "json_object",
            "openai_api_key": key,
        }
        config = _config(tmp_path, model, f"key-{number}.toml")
        printed = ""
        for args in (["doctor"], ["extract", "--raw", NOTE]):
            done = subprocess.run(
                [sys.executable, "-m", "membrane.cli", "--log-level", "debug", *args],
                cwd=ROOT,
                env=membrane_env(config),
                capture_output=True,
                timeout=600,
            )
            printed += (done.stdout + done.stderr).decode("utf-8", "replace")
        assert key not in printed and "Bearer" not in printed
        assert "openai" in printed and ("refused the API key" in printed) == (key != llama_cpp_server.api_key)
