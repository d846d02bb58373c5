"""The ollama backend through the real `ollama` client over HTTP, against FakeOllama."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import ollama
import pytest

from membrane.backends import GenerationRequest, get_backend
from membrane.backends.ollama import OllamaBackend
from membrane.config import Settings
from membrane.errors import ExtractionFailed, ModelNotFound, ModelUnavailable
from membrane.extract import build_extractor
from membrane.testing import FakeOllama

GOOD = (
    '{"entities":[{"name":"Alice","role":"subject"},{"name":"k3s","role":"object"}],'
    '"relationships":[{"source":"Alice","relation":"DEPLOYED_ON","target":"k3s"}]}'
)
NOTE = "Alice deployed the billing API on k3s."
REASONING = "Okay, the user wants entities. Alice is a person, k3s is a cluster. {not json} Let me answer."


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    """A FakeOllama on a free port."""
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def ollama_settings(server: FakeOllama, make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings pointing the ollama backend at the fake server."""

    def build(name: str, **model: object) -> Settings:
        return make_settings(
            model={"backend": "ollama", "ollama_host": server.url, "name": name, "timeout_s": 5.0, **model},
            extraction={"max_repairs": 2},
        )

    return build


def test_request_carries_schema_think_false_and_options(
    server: FakeOllama, ollama_settings: Callable[..., Settings]
) -> None:
    """A thinking-capable model gets think=false, the JSON schema as format, and the caps as options."""
    server.add_scripted("qwen3:4b", [GOOD], thinking=REASONING)
    settings = ollama_settings("qwen3:4b", num_predict=512, num_ctx=2048, seed=3, keep_alive="5m")
    result = build_extractor(settings).extract(NOTE)
    assert result.extraction.relationships[0].triple == ("Alice", "DEPLOYED_ON", "k3s")
    body = server.chat_requests()[0]
    assert body["think"] is False and body["stream"] is False and body["keep_alive"] == "5m"
    assert body["format"]["properties"]["entities"]["maxItems"] >= 1
    assert body["format"]["additionalProperties"] is False
    assert body["options"] == {"temperature": 0.0, "num_predict": 512, "num_ctx": 2048, "seed": 3}
    assert body["messages"][-1] == {"role": "user", "content": NOTE}
    shows = [r for r in server.requests if r.path == "/api/show"]
    assert len(shows) == 1  # capabilities cached per model


def test_model_without_thinking_gets_no_think_field(
    server: FakeOllama, ollama_settings: Callable[..., Settings]
) -> None:
    """think is only sent to models whose capabilities include thinking."""
    server.add_scripted("llama3.2:1b", [GOOD])
    build_extractor(ollama_settings("llama3.2:1b")).extract(NOTE)
    assert "think" not in server.chat_requests()[0]


def test_reasoning_text_before_the_answer_is_stripped(
    server: FakeOllama, ollama_settings: Callable[..., Settings]
) -> None:
    """A model that writes <think>...</think> before its JSON still yields a valid first answer."""
    server.add_scripted("deepseek-r1:1.5b", [f"<think>{REASONING}</think>\n\n{GOOD}"])
    result = build_extractor(ollama_settings("deepseek-r1:1.5b")).extract(NOTE)
    assert result.first_attempt_valid and result.calls == 1
    assert result.raw_outputs[0].startswith("<think>")
    assert len(result.extraction.entities) == 2


def test_thinking_model_reasoning_unasked_is_stripped(server: FakeOllama) -> None:
    """Without think=false the fake inlines reasoning, which the cleaner removes."""
    server.add_scripted("qwen3:fake", [GOOD], thinking=REASONING)
    response = ollama.Client(host=server.url).chat(model="qwen3:fake", messages=[{"role": "user", "content": NOTE}])
    assert (response.message.content or "").startswith("<think>")
    from membrane.extract import parse_output
    from membrane.schema import ExtractionRules

    assert len(parse_output(response.message.content or "", ExtractionRules()).entities) == 2


def test_broken_then_good_json_is_repaired(server: FakeOllama, ollama_settings: Callable[..., Settings]) -> None:
    """Broken JSON first, good JSON second: the repair request carries the error and succeeds."""
    server.add_scripted("qwen2.5:0.5b", ['{"entities": [{"name": "Alice", "role": "subj', GOOD])
    result = build_extractor(ollama_settings("qwen2.5:0.5b")).extract(NOTE)
    assert result.calls == 2 and not result.first_attempt_valid
    repair = server.chat_requests()[1]["messages"]
    assert repair[-2]["role"] == "assistant" and repair[-2]["content"].startswith('{"entities"')
    assert "not valid JSON" in repair[-1]["content"]
    assert result.extraction.entities[0].name == "Alice"


def test_never_valid_json_fails_with_a_clear_bounded_error(
    server: FakeOllama, ollama_settings: Callable[..., Settings]
) -> None:
    """A model that never answers in JSON gets 1 + max_repairs calls, then ExtractionFailed with every output."""
    server.add_scripted("chatty:1b", ["Sure! Alice deployed the API on k3s."])
    with pytest.raises(ExtractionFailed) as caught:
        build_extractor(ollama_settings("chatty:1b")).extract(NOTE)
    assert len(server.chat_requests()) == 3
    assert caught.value.raw_outputs == ["Sure! Alice deployed the API on k3s."] * 3
    assert caught.value.model == "ollama:chatty:1b"
    assert "no valid extraction in 3 calls" in str(caught.value) and "no JSON object" in str(caught.value)


def test_server_down_is_retryable(server: FakeOllama, ollama_settings: Callable[..., Settings]) -> None:
    """A stopped server raises ModelUnavailable (retryable), and work resumes when it returns."""
    server.add_scripted("qwen2.5:0.5b", [GOOD])
    extractor = build_extractor(ollama_settings("qwen2.5:0.5b"))
    server.stop()
    with pytest.raises(ModelUnavailable, match="cannot connect"):
        extractor.extract(NOTE)
    server.start()
    assert extractor.extract(NOTE).calls == 1


def test_timeout_is_retryable(server: FakeOllama, ollama_settings: Callable[..., Settings]) -> None:
    """A model slower than model.timeout_s raises ModelUnavailable, not a bad-output error."""
    server.add_scripted("slow:7b", [GOOD], delay_s=2.0)
    with pytest.raises(ModelUnavailable, match="did not answer within 0.5 s") as caught:
        build_extractor(ollama_settings("slow:7b", timeout_s=0.5)).extract(NOTE)
    assert caught.value.retry_after == 0.5


def test_unknown_model_is_model_not_found(server: FakeOllama, ollama_settings: Callable[..., Settings]) -> None:
    """A model the server does not have is a permanent ModelNotFound with an ollama pull hint."""
    with pytest.raises(ModelNotFound, match="no model 'missing:1b'") as caught:
        build_extractor(ollama_settings("missing:1b")).extract(NOTE)
    assert "ollama pull missing:1b" in caught.value.hint


def test_generation_reports_tokens_and_rate(server: FakeOllama, ollama_settings: Callable[..., Settings]) -> None:
    """Token counts and eval duration from the response give tokens per second."""
    server.add_scripted("qwen3:4b", [GOOD], thinking=REASONING)
    backend = get_backend("ollama", ollama_settings("qwen3:4b"))
    request = GenerationRequest("qwen3:4b", ({"role": "user", "content": NOTE},), None, 64, 512)
    generation = backend.generate(request)
    assert generation.text == GOOD and generation.done_reason == "stop"
    assert generation.prompt_tokens > 0 and generation.completion_tokens == len(GOOD) // 4
    assert generation.eval_seconds is not None and generation.tokens_per_second > 0
    assert "format" not in server.chat_requests()[0]  # schema None: unconstrained


def test_list_parameters_and_check(server: FakeOllama, ollama_settings: Callable[..., Settings]) -> None:
    """Model listing, parameter size and the doctor check come from the server."""
    server.add_scripted("qwen3:4b", [GOOD], thinking=REASONING, parameter_size="4.0B")
    backend = OllamaBackend(ollama_settings("qwen3:4b"))
    assert backend.list_models() == ["qwen3:4b"]
    assert backend.parameters("qwen3:4b") == "4.0B"
    check = backend.check("qwen3:4b")
    assert check.ok and "think=false" in check.detail
    missing = backend.check("nope")
    assert not missing.ok and missing.fix == "ollama pull nope"
    server.stop()
    down = backend.check("other")
    assert not down.ok and "does not answer" in down.detail


def test_fake_server_streams_and_registers_models(server: FakeOllama, tmp_path: Path) -> None:
    """The fake streams NDJSON chat parts and registers models from blobs or an existing model."""
    server.add_scripted("qwen3:fake", [GOOD], thinking=REASONING)
    client = ollama.Client(host=server.url)
    parts = list(client.chat(model="qwen3:fake", messages=[{"role": "user", "content": NOTE}], think=True,
                             stream=True))
    assert parts[0].message.thinking == REASONING
    assert "".join(p.message.content or "" for p in parts) == GOOD and parts[-1].done
    blob = tmp_path / "model.gguf"
    blob.write_bytes(b"GGUF" + bytes(64))
    digest = client.create_blob(blob)
    assert client.create(model="mine", files={"model.gguf": digest}).status == "success"
    assert client.create(model="alias", from_="qwen3:fake").status == "success"
    assert {m.model for m in client.list().models} == {"qwen3:fake", "mine", "alias"}


@pytest.mark.model
@pytest.mark.slow
def test_real_tiny_model_behind_the_fake_server(
    server: FakeOllama, ollama_settings: Callable[..., Settings], tiny_model_path: Path
) -> None:
    """SmolLM2 served over the Ollama API honours the schema sent as format and yields a valid extraction."""
    server.add_gguf("smollm2:135m", tiny_model_path, chat_format="chatml")
    result = build_extractor(ollama_settings("smollm2:135m", num_predict=256, timeout_s=300.0)).extract(NOTE)
    assert result.first_attempt_valid
    assert result.completion_tokens <= 256
