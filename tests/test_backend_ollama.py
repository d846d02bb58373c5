"""The ollama backend through the real `ollama` client: against the real Ollama server
(scripts/ollama-local, the tiny models it imports) for everything it can serve, and
against FakeOllama only for a thinking model, malformed output, a hang and an outage."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import ollama
import pytest
from conftest import OllamaServer

from membrane.backends import GenerationRequest
from membrane.backends.ollama import OllamaBackend
from membrane.config import Settings
from membrane.errors import ExtractionFailed, ModelNotFound, ModelRejected, ModelUnavailable
from membrane.extract import build_extractor
from membrane.testing import FakeOllama

GOOD = (
    '{"entities":[{"name":"Alice","role":"subject"},{"name":"k3s","role":"object"}],'
    '"relationships":[{"source":"Alice","relation":"DEPLOYED_ON","target":"k3s"}]}'
)
NOTE = "Alice deployed the billing API on k3s."
REASONING = "Okay, the user wants entities. Alice is a person, k3s is a cluster. {not json} Let me answer."
CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    """A FakeOllama on a free port."""
    with FakeOllama() as fake:
        yield fake


@pytest.fixture
def ollama_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings for the ollama backend at a host."""

    def build(host: str, name: str, **model: object) -> Settings:
        return make_settings(
            model={"backend": "ollama", "ollama_host": host, "name": name, "timeout_s": 300.0, **model},
            extraction={"max_repairs": 2},
        )

    return build


@pytest.fixture
def real_backend(ollama_server: OllamaServer, ollama_settings: Callable[..., Settings]) -> Iterator[OllamaBackend]:
    """An OllamaBackend on the real server."""
    backend = OllamaBackend(ollama_settings(ollama_server.host, ollama_server.smollm2))
    yield backend
    backend.close()


@pytest.fixture
def client(ollama_server: OllamaServer) -> Iterator[ollama.Client]:
    """The plain ollama client on the real server."""
    plain = ollama.Client(host=ollama_server.host)
    yield plain
    plain.close()


@pytest.fixture
def registered(client: ollama.Client) -> Iterator[list[str]]:
    """Names the test registers on the real server; deleted afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            client.delete(name)
        except ollama.ResponseError:
            pass  # never created: the test was about a refusal


def request(model: str, content: str = NOTE, **fields: object) -> GenerationRequest:
    options = {"schema": None, "num_predict": 64, "num_ctx": 1024, **fields}
    return GenerationRequest(model, ({"role": "user", "content": content},), **options)  # type: ignore[arg-type]


# -- the real server


@pytest.mark.ollama
def test_real_extraction_honours_the_schema(
    ollama_server: OllamaServer, ollama_settings: Callable[..., Settings]
) -> None:
    """SmolLM2 on the real server, given the extraction schema as format, answers valid JSON the extractor accepts."""
    settings = ollama_settings(ollama_server.host, ollama_server.smollm2, num_predict=256)
    result = build_extractor(settings).extract(NOTE)
    assert result.first_attempt_valid and result.calls == 1
    assert result.completion_tokens <= 256 and result.prompt_tokens > 0


@pytest.mark.ollama
def test_real_schema_and_think_false_through_the_client(ollama_server: OllamaServer, client: ollama.Client) -> None:
    """The real server takes think=false with a JSON-schema format and answers JSON of that schema, not thinking."""
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}},
        "required": ["name"],
        "additionalProperties": False,
    }
    response = client.chat(
        model=ollama_server.smollm2,
        messages=[{"role": "user", "content": "Who deployed the API? " + NOTE}],
        format=schema,
        think=False,
        options={"temperature": 0, "num_predict": 48},
        stream=False,
    )
    import json

    answer = json.loads(response.message.content or "")
    assert set(answer) == {"name"} and isinstance(answer["name"], str)
    assert not response.message.thinking and response.done


@pytest.mark.ollama
def test_real_generation_reports_tokens_and_rate(real_backend: OllamaBackend, ollama_server: OllamaServer) -> None:
    """Token counts and durations from the real server give tokens per second; the done reason is reported."""
    generation = real_backend.generate(request(ollama_server.smollm2, "Count from one to twenty.", num_predict=16))
    assert generation.completion_tokens == 16 and generation.done_reason == "length" and generation.truncated
    assert generation.prompt_tokens > 5 and generation.eval_seconds is not None
    assert generation.tokens_per_second > 0 and generation.seconds >= generation.eval_seconds


@pytest.mark.ollama
def test_real_tags_show_and_ps(real_backend: OllamaBackend, ollama_server: OllamaServer, client: ollama.Client) -> None:
    """The listing, parameter size and capabilities come from the real server, and ps shows the model kept alive."""
    assert {f"{ollama_server.smollm2}:latest", f"{ollama_server.gemma}:latest"} <= set(real_backend.list_models())
    assert real_backend.parameters(ollama_server.smollm2).endswith("M")
    assert real_backend.parameters(ollama_server.gemma).endswith("M")
    assert "completion" in real_backend.capabilities(ollama_server.smollm2)
    assert "thinking" not in real_backend.capabilities(ollama_server.smollm2)
    real_backend.generate(request(ollama_server.smollm2, num_predict=2))
    loaded = {m.model: m for m in client.ps().models}
    running = loaded[f"{ollama_server.smollm2}:latest"]
    assert running.expires_at is not None and running.size_vram == 0  # CPU only, kept for keep_alive


@pytest.mark.ollama
def test_real_check_for_present_and_missing_models(real_backend: OllamaBackend, ollama_server: OllamaServer) -> None:
    """The doctor check passes for a model the server has and fails with a pull fix for one it lacks."""
    present = real_backend.check(ollama_server.gemma)
    assert present.ok and ollama_server.gemma in present.detail and "thinking" not in present.detail
    missing = real_backend.check("no-such-model:1b")
    assert not missing.ok and missing.fix == "ollama pull no-such-model:1b"


@pytest.mark.ollama
def test_real_missing_model_is_model_not_found(
    ollama_server: OllamaServer, ollama_settings: Callable[..., Settings]
) -> None:
    """The real server's 404 for a model it does not have is a permanent ModelNotFound with an ollama pull hint."""
    with pytest.raises(ModelNotFound, match="no model 'missing:1b'") as caught:
        build_extractor(ollama_settings(ollama_server.host, "missing:1b")).extract(NOTE)
    assert "ollama pull missing:1b" in caught.value.hint


@pytest.mark.ollama
def test_real_timeout_is_retryable(ollama_server: OllamaServer, ollama_settings: Callable[..., Settings]) -> None:
    """A timeout far below the generation's time (2000 tokens) raises ModelUnavailable, retry_after the timeout."""
    backend = OllamaBackend(ollama_settings(ollama_server.host, ollama_server.gemma, timeout_s=3.0))
    backend.capabilities(ollama_server.gemma)  # show() answered: what times out below is the generation
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="did not answer within 3 s") as caught:
        backend.generate(request(ollama_server.gemma, "Write a long story about a cluster.", num_predict=2000))
    assert caught.value.retry_after == 3.0 and time.monotonic() - started < 15
    backend.close()


def test_server_not_listening_is_retryable(ollama_settings: Callable[..., Settings]) -> None:
    """A host where nothing listens raises ModelUnavailable, and its doctor check says how to start Ollama."""
    backend = OllamaBackend(ollama_settings(f"http://127.0.0.1:{closed_port()}", "smollm2-135m", timeout_s=2.0))
    with pytest.raises(ModelUnavailable, match="cannot connect"):
        backend.generate(request("smollm2-135m"))
    down = backend.check("smollm2-135m")
    assert not down.ok and "does not answer" in down.detail and down.fix == "start it: ollama serve"


@pytest.mark.ollama
def test_create_model_with_template_parameters_and_system(
    real_backend: OllamaBackend, client: ollama.Client, tiny_model_path: Path, registered: list[str]
) -> None:
    """create_model registers a GGUF under a new name with template, parameters and system prompt; it generates."""
    name = "membrane-test-create:latest"
    registered.append(name)
    real_backend.create_model(
        name,
        tiny_model_path,
        template=CHATML,
        system="You answer in one word.",
        parameters={"temperature": 0.0, "num_ctx": 1024, "stop": ["<|im_end|>"]},
    )
    shown = client.show(name)
    assert shown.template == CHATML and "You answer in one word." in (shown.modelfile or "")
    assert "num_ctx" in (shown.parameters or "") and "1024" in (shown.parameters or "")
    assert name in real_backend.list_models()
    generation = real_backend.generate(request(name, "Name a colour.", num_predict=8))
    assert generation.completion_tokens > 0 and generation.text.strip()


@pytest.mark.ollama
def test_create_model_replaces_and_forgets_cached_capabilities(
    real_backend: OllamaBackend, tiny_model_path: Path, gemma_model_path: Path, registered: list[str]
) -> None:
    """Registering the same name again replaces the model, and the backend asks the server afresh."""
    name = "membrane-test-replace:latest"
    registered.append(name)
    real_backend.create_model(name, tiny_model_path, template=CHATML)
    first = real_backend.parameters(name)
    real_backend.create_model(name, gemma_model_path)
    assert real_backend.parameters(name) != first


def tiny_lora(path: Path, scale: float) -> Path:
    """A rank-8 LoRA GGUF on SmolLM2's attention queries (every layer), random A and B times `scale`."""
    gguf = pytest.importorskip("gguf", reason="the gguf package (fine-tuning extra) writes the adapter")
    import numpy as np

    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", 8.0)
    for layer in range(30):  # numpy shapes are ggml's reversed: A (r, n_embd), B (n_embd, r)
        for suffix, shape in (("lora_a", (8, 576)), ("lora_b", (576, 8))):
            weights = (rng.standard_normal(shape) * scale).astype(np.float32)
            writer.add_tensor(f"blk.{layer}.attn_q.weight.{suffix}", weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.ollama
def test_create_model_with_a_lora_adapter(
    real_backend: OllamaBackend, client: ollama.Client, tiny_model_path: Path, tmp_path: Path, registered: list[str]
) -> None:
    """A GGUF LoRA adapter registered with create_model is stored as the model's adapter and changes its answers."""
    base, tuned = "membrane-test-base:latest", "membrane-test-lora:latest"
    registered.extend([base, tuned])
    real_backend.create_model(base, tiny_model_path, template=CHATML)
    real_backend.create_model(tuned, tiny_model_path, adapter=tiny_lora(tmp_path / "lora.gguf", 0.5), template=CHATML)
    assert "ADAPTER" in (client.show(tuned).modelfile or "") and "ADAPTER" not in (client.show(base).modelfile or "")
    ask = request(base, "Name three colours.", num_predict=12)
    plain = real_backend.generate(ask).text
    adapted = real_backend.generate(GenerationRequest(tuned, ask.messages, None, 12, 1024)).text
    assert adapted != plain


@pytest.mark.ollama
def test_create_model_refusals(real_backend: OllamaBackend, tmp_path: Path, registered: list[str]) -> None:
    """A missing file is ModelNotFound; a file that is no GGUF is refused by the real server as ModelRejected."""
    registered.append("membrane-test-bad:latest")
    with pytest.raises(ModelNotFound, match="is not a file"):
        real_backend.create_model("membrane-test-bad", tmp_path / "absent.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 64)
    with pytest.raises(ModelRejected, match="refused to register 'membrane-test-bad'"):
        real_backend.create_model("membrane-test-bad", junk)


# -- FakeOllama: what the real server cannot produce here


def test_request_carries_schema_think_false_and_options(
    server: FakeOllama, ollama_settings: Callable[..., Settings]
) -> None:
    """A thinking-capable model gets think=false, the JSON schema as format, and the caps as options."""
    server.add_scripted("qwen3:4b", [GOOD], thinking=REASONING)
    settings = ollama_settings(server.url, "qwen3:4b", num_predict=512, num_ctx=2048, seed=3, keep_alive="5m")
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
    build_extractor(ollama_settings(server.url, "llama3.2:1b")).extract(NOTE)
    assert "think" not in server.chat_requests()[0]


def test_reasoning_text_before_the_answer_is_stripped(
    server: FakeOllama, ollama_settings: Callable[..., Settings]
) -> None:
    """A model that writes <think>...</think> before its JSON still yields a valid first answer."""
    server.add_scripted("deepseek-r1:1.5b", [f"<think>{REASONING}</think>\n\n{GOOD}"])
    result = build_extractor(ollama_settings(server.url, "deepseek-r1:1.5b")).extract(NOTE)
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


def test_thinking_model_streams_its_reasoning_first(server: FakeOllama) -> None:
    """With think=true the fake streams the reasoning as message.thinking before the content."""
    server.add_scripted("qwen3:fake", [GOOD], thinking=REASONING)
    parts = list(
        ollama.Client(host=server.url).chat(
            model="qwen3:fake", messages=[{"role": "user", "content": NOTE}], think=True, stream=True
        )
    )
    assert parts[0].message.thinking == REASONING
    assert "".join(p.message.content or "" for p in parts) == GOOD and parts[-1].done


def test_thinking_model_check_says_think_false_is_sent(
    server: FakeOllama, ollama_settings: Callable[..., Settings]
) -> None:
    """The doctor check of a thinking model says that think=false is sent."""
    server.add_scripted("qwen3:4b", [GOOD], thinking=REASONING, parameter_size="4.0B")
    backend = OllamaBackend(ollama_settings(server.url, "qwen3:4b"))
    check = backend.check("qwen3:4b")
    assert check.ok and "think=false" in check.detail and backend.parameters("qwen3:4b") == "4.0B"


def test_broken_then_good_json_is_repaired(server: FakeOllama, ollama_settings: Callable[..., Settings]) -> None:
    """Broken JSON first, good JSON second: the repair request carries the error and succeeds."""
    server.add_scripted("qwen2.5:0.5b", ['{"entities": [{"name": "Alice", "role": "subj', GOOD])
    result = build_extractor(ollama_settings(server.url, "qwen2.5:0.5b")).extract(NOTE)
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
        build_extractor(ollama_settings(server.url, "chatty:1b")).extract(NOTE)
    assert len(server.chat_requests()) == 3
    assert caught.value.raw_outputs == ["Sure! Alice deployed the API on k3s."] * 3
    assert caught.value.model == "ollama:chatty:1b"
    assert "no valid extraction in 3 calls" in str(caught.value) and "no JSON object" in str(caught.value)


def test_hung_server_times_out_as_retryable(server: FakeOllama, ollama_settings: Callable[..., Settings]) -> None:
    """A server that accepts the request and then hangs raises ModelUnavailable, not a bad-output error."""
    server.add_scripted("slow:7b", [GOOD], delay_s=2.0)
    with pytest.raises(ModelUnavailable, match="did not answer within 0.5 s") as caught:
        build_extractor(ollama_settings(server.url, "slow:7b", timeout_s=0.5)).extract(NOTE)
    assert caught.value.retry_after == 0.5


def test_outage_is_retryable_and_work_resumes(server: FakeOllama, ollama_settings: Callable[..., Settings]) -> None:
    """A server that goes away raises ModelUnavailable, and the same extractor works again when it is back."""
    server.add_scripted("qwen2.5:0.5b", [GOOD])
    extractor = build_extractor(ollama_settings(server.url, "qwen2.5:0.5b"))
    server.stop()
    with pytest.raises(ModelUnavailable, match="cannot connect"):
        extractor.extract(NOTE)
    server.start()
    assert extractor.extract(NOTE).calls == 1


# -- FakeOllama against the real server: the same requests, answers of the same shape


def shape(value: object) -> object:
    """Keys and value types, recursively; a list by its first element."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in sorted(value.items())}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def exchange(host: str, model: str) -> dict[str, object]:
    """The shapes of the answers to one set of requests."""
    chat = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hi."}],
        "think": False,
        "options": {"num_predict": 4, "temperature": 0},
    }
    with httpx.Client(base_url=host, timeout=60) as http:
        whole = http.post("/api/chat", json=chat | {"stream": False}).json()
        lines = [line for line in http.post("/api/chat", json=chat | {"stream": True}).text.splitlines() if line]
        tags = http.get("/api/tags").json()
        ps = http.get("/api/ps").json()
        shown = http.post("/api/show", json={"model": model}).json()
        missing = http.post("/api/chat", json=chat | {"model": "no-such:model", "stream": False})
        no_thinking = http.post("/api/chat", json=chat | {"think": True, "stream": False})
    import json

    parts = [json.loads(line) for line in lines]
    info = shown.pop("model_info")  # its keys name the architecture (llama.*, gemma3.*)
    return {
        "chat": shape(whole),
        "chat_part": shape(parts[0]),
        "chat_last": shape(parts[-1]),
        "tags_model": shape([m for m in tags["models"] if m["name"].startswith(model)][0]),
        "ps_model": shape([m for m in ps["models"] if m["name"].startswith(model)][0]),
        "show": shape(shown),
        "model_info": (type(info).__name__, shape(info.get("general.architecture"))),
        "missing": (missing.status_code, shape(missing.json())),
        "think_refused": (no_thinking.status_code, shape(no_thinking.json())),
    }


@pytest.mark.ollama
def test_fake_answers_have_the_real_servers_shape(ollama_server: OllamaServer, server: FakeOllama) -> None:
    """/api/chat (whole, streamed, refused), /api/tags, /api/ps, /api/show and a 404: same keys and value types."""
    name = f"{ollama_server.smollm2}:latest"
    server.add_scripted(name, ["hi there, friend"])
    real, fake = exchange(ollama_server.host, name), exchange(server.url, name)
    for key, real_shape in real.items():
        assert fake[key] == real_shape, key
