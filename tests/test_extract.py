"""Extraction without a live model: output cleaning, chunking, the repair loop (replay backend),
the backend registry and the `membrane extract` command."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from membrane.backends import Generation, GenerationRequest, backend_names, get_backend, register_backend
from membrane.cli import main
from membrane.config import Settings
from membrane.errors import ConfigError, ExtractionFailed, ModelNotFound
from membrane.extract import (
    Extractor,
    InvalidOutput,
    build_extractor,
    clean_output,
    model_schema,
    parse_output,
    split_text,
)
from membrane.prompts import PROMPT_VERSION
from membrane.schema import ExtractionRules

GOOD = (
    '{"entities":[{"name":"Alice","role":"subject"},{"name":"k3s","role":"object"}],'
    '"relationships":[{"source":"Alice","relation":"deployed on","target":"k3s"}]}'
)
NOTE = "Alice deployed the billing API on k3s."


def _write_jsonl(path: Path, records: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "output": o}) + "\n" for t, o in records), encoding="utf-8")
    return path


@pytest.fixture
def replay_settings(tmp_path: Path, make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings for the replay backend over the given (text, output) records."""

    def build(records: list[tuple[str, str]], **extraction: Any) -> Settings:
        replay_file = _write_jsonl(tmp_path / "replay.jsonl", records)
        # The base model's name: a tuned model's name would select the tuned prompt (extract-t1).
        return make_settings(
            model={"backend": "replay", "name": "smollm2-135m", "replay_file": replay_file}, extraction=extraction
        )

    return build


class ScriptBackend:
    """A backend double answering from a list of Generations and keeping each request."""

    name = "script"

    def __init__(self, answers: list[Generation]) -> None:
        self.answers = answers
        self.requests: list[GenerationRequest] = []

    def generate(self, request: GenerationRequest) -> Generation:
        self.requests.append(request)
        return self.answers[min(len(self.requests) - 1, len(self.answers) - 1)]

    def list_models(self) -> list[str]:
        return ["script"]

    def check(self, model: str) -> Any:
        raise NotImplementedError

    def parameters(self, model: str) -> str:
        return ""


def _generation(text: str, done_reason: str = "stop") -> Generation:
    return Generation(text, "m", prompt_tokens=10, completion_tokens=5, seconds=0.5, done_reason=done_reason)


# ---------------------------------------------------------------- cleaning and parsing


@pytest.mark.parametrize(
    "raw",
    [
        GOOD,
        f"<think>The user wants JSON. {{maybe}}</think>\n{GOOD}",
        f"<THINK>\nreasoning\n</THINK>{GOOD}",
        f"```json\n{GOOD}\n```",
        f"<think>hmm</think>\n```\n{GOOD}\n```\n",
        f"Here is the graph:\n{GOOD}\nHope this helps!",
        f"reasoning the template opened</think>{GOOD}",
    ],
)
def test_clean_output_recovers_the_json(raw: str) -> None:
    """Reasoning blocks, fences and surrounding prose are removed before parsing."""
    assert json.loads(clean_output(raw)) == json.loads(GOOD)


def test_unclosed_reasoning_holds_no_answer() -> None:
    """A model that ran out of budget while thinking produced no JSON."""
    with pytest.raises(InvalidOutput, match="no JSON object"):
        parse_output('<think>First, {"entities": I should consider', ExtractionRules())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"entities": [', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"entities": [{"name": ""}]}', "name is empty"),
        ('{"entities": [], "relationships": [], "extra": 1}', "extra"),
        ('{"relationships": [{"source": "a", "relation": "42", "target": "b"}]}', "UPPER_SNAKE_CASE"),
        ("", "no JSON object"),
    ],
)
def test_parse_output_says_what_is_wrong(raw: str, message: str) -> None:
    """Invalid answers raise InvalidOutput with a message the model can act on."""
    with pytest.raises(InvalidOutput, match=message):
        parse_output(raw, ExtractionRules())


@pytest.mark.parametrize(
    "name", ['O\'Brien "the admin"', "`rm -rf /`", "{braces}", "line one\nline two", "東京サーバー", "Ёжик"]
)
def test_hostile_names_in_model_output_survive_intact(name: str) -> None:
    """Quotes, backticks, braces, newlines and non-Latin scripts in a fenced answer come through unchanged."""
    answer = json.dumps(
        {
            "entities": [{"name": name, "role": "subject"}],
            "relationships": [{"source": name, "relation": "USES", "target": "k3s"}],
        },
        ensure_ascii=False,
    )
    extraction = parse_output(f"<think>{{not this}}</think>```json\n{answer}\n```", ExtractionRules())
    assert extraction.entities[0].name == name and extraction.relationships[0].source == name


def test_model_schema_is_tightened_for_decoding() -> None:
    """The schema sent to models bounds items by budget, shortens names and pins the relation alphabet."""
    schema = model_schema(ExtractionRules(max_entities=24, max_relationships=2), max_items=5)
    props = schema["properties"]
    assert props["entities"]["maxItems"] == 5
    assert props["relationships"]["maxItems"] == 2
    relation = props["relationships"]["items"]["properties"]["relation"]
    assert relation["pattern"] == "^[A-Z][A-Z0-9_]{0,39}$"
    assert props["entities"]["items"]["properties"]["name"]["maxLength"] == 80
    vocab = model_schema(ExtractionRules(relation_vocabulary=("USES",)), max_items=5)
    assert vocab["properties"]["relationships"]["items"]["properties"]["relation"]["enum"] == ["USES"]
    compact = model_schema(ExtractionRules(max_entities=24, max_relationships=2), max_items=5, compact=True)
    props = compact["properties"]
    assert (props["entities"]["maxItems"], props["relationships"]["maxItems"]) == (5, 2)
    source, relation, target = props["relationships"]["items"]["prefixItems"]
    assert relation == {"type": "string", "pattern": "^[A-Z][A-Z0-9_]{0,39}$"}
    assert props["entities"]["items"]["maxLength"] == source["maxLength"] == target["maxLength"] == 80


# ---------------------------------------------------------------- chunking


def test_split_text_keeps_offsets_and_prefers_paragraphs() -> None:
    """Chunks fit the size, point back into the capture, and break at paragraph ends when they can."""
    paragraphs = [f"Paragraph {i} says that server{i} runs service{i}. It is fine." for i in range(12)]
    text = "\n\n  " + "\n\n".join(paragraphs) + "\n"
    chunks = split_text(text, 150)
    assert len(chunks) > 1
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert len(chunk.text) <= 150
        assert chunk.text.endswith("It is fine.")
    assert "".join(c.text for c in chunks).replace("\n", "") == "".join(paragraphs)


def test_split_text_falls_back_to_sentences_and_words() -> None:
    """A paragraph longer than a chunk splits at sentences, and an endless sentence at words."""
    sentence_text = " ".join(f"Sentence number {i} is here." for i in range(40))
    for chunk in split_text(sentence_text, 100):
        assert len(chunk.text) <= 100 and chunk.text.endswith(".")
    words = "word " * 200
    chunks = split_text(words, 64)
    assert all(len(c.text) <= 64 and words[c.start : c.end] == c.text for c in chunks)
    assert sum(c.text.count("word") for c in chunks) == 200


def test_split_text_overlap_repeats_the_sentence_before() -> None:
    """With overlap 1 each later chunk starts with the last sentence of the chunk before, offsets still exact."""
    sentences = [f"Host{i} runs service{i}." for i in range(9)]
    text = " ".join(sentences)
    plain = split_text(text, 50)
    overlapped = split_text(text, 50, overlap=1)
    assert len(plain) == len(overlapped) > 2
    assert overlapped[0] == plain[0]
    for before, chunk, alone in zip(plain, overlapped[1:], plain[1:], strict=False):
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.end == alone.end and chunk.start < alone.start
        assert chunk.text.startswith(before.text.split(". ")[-1])


def test_split_text_of_blank_text_is_empty() -> None:
    """Whitespace-only text yields no chunks."""
    assert split_text(" \n\n ", 100) == []


# ---------------------------------------------------------------- the repair loop


def test_valid_first_answer(replay_settings: Callable[..., Settings]) -> None:
    """A valid answer gives a normalised Extraction with its provenance and costs."""
    settings = replay_settings([(NOTE, GOOD)])
    result = build_extractor(settings).extract(NOTE)
    assert result.extraction.relationships[0].triple == ("Alice", "DEPLOYED_ON", "k3s")
    assert result.first_attempt_valid and result.calls == 1 and result.errors == ()
    assert result.raw_outputs == (GOOD,)
    assert result.prompt_version == PROMPT_VERSION and result.backend == "replay"
    assert result.chunks == ((0, len(NOTE)),)


def test_broken_then_good_json_is_repaired(replay_settings: Callable[..., Settings]) -> None:
    """A broken first answer is retried with the validator's error; the second answer wins."""
    settings = replay_settings([(NOTE, '{"entities": [{"name": "Alice"'), (NOTE, GOOD)])
    result = build_extractor(settings).extract(NOTE)
    assert result.calls == 2 and not result.first_attempt_valid
    assert len(result.errors) == 1 and "not valid JSON" in result.errors[0]
    assert result.extraction.entities[0].name == "Alice"


def test_repair_turn_carries_the_error() -> None:
    """The repair request holds the invalid answer and the validator's message, then the schema again."""
    backend = ScriptBackend([_generation('{"entities": [{"name": " "}]}'), _generation(GOOD)])
    extractor = Extractor(backend, "m", Settings())
    extractor.extract(NOTE)
    second = backend.requests[1]
    assert second.attempt == 1 and second.text == NOTE
    assert second.messages[-2] == {"role": "assistant", "content": '{"entities": [{"name": " "}]}'}
    assert "name is empty" in second.messages[-1]["content"]
    assert second.schema == backend.requests[0].schema


def test_never_valid_fails_within_the_repair_budget(replay_settings: Callable[..., Settings]) -> None:
    """An answer that never validates ends in ExtractionFailed after 1 + max_repairs calls, carrying everything."""
    settings = replay_settings([(NOTE, "I cannot do that.")], max_repairs=2)
    with pytest.raises(ExtractionFailed) as caught:
        build_extractor(settings).extract(NOTE)
    error = caught.value
    assert error.raw_outputs == ["I cannot do that."] * 3
    assert len(error.errors) == 3 and all("no JSON object" in e for e in error.errors)
    assert error.model == "replay:smollm2-135m"
    assert "no valid extraction in 3 calls" in str(error)


def test_truncated_answer_halves_the_item_bound() -> None:
    """An answer cut at num_predict is repaired with half as many items allowed."""
    backend = ScriptBackend([_generation('{"entities": [{"name": "a"', done_reason="length"), _generation(GOOD)])
    settings = Settings.model_validate({"model": {"num_predict": 1024}})
    Extractor(backend, "m", settings).extract(NOTE)
    first, second = (r.schema["properties"]["entities"]["maxItems"] for r in backend.requests)  # type: ignore[index]
    assert second == first // 2
    assert "1024-token cap" in backend.requests[1].messages[-1]["content"]
    assert f'"maxItems":{second}' in backend.requests[1].messages[0]["content"]


def test_repairs_keep_only_the_latest_invalid_answer() -> None:
    """Each repair request holds the base messages plus one repair turn, however many repairs came before."""
    answers = [_generation("first bad"), _generation("second bad"), _generation(GOOD)]
    backend = ScriptBackend(answers)
    Extractor(backend, "m", Settings.model_validate({"extraction": {"max_repairs": 2}})).extract(NOTE)
    first, _, third = backend.requests
    assert len(third.messages) == len(first.messages) + 2
    assert third.messages[-2]["content"] == "second bad"


def test_every_call_carries_the_caps() -> None:
    """Requests carry the configured num_predict, num_ctx, temperature and seed."""
    backend = ScriptBackend([_generation(GOOD)])
    settings = Settings.model_validate({"model": {"num_predict": 300, "num_ctx": 2048, "temperature": 0.1, "seed": 7}})
    Extractor(backend, "m", settings).extract(NOTE)
    request = backend.requests[0]
    assert (request.num_predict, request.num_ctx, request.temperature, request.seed) == (300, 2048, 0.1, 7)
    assert request.messages[0]["role"] == "system" and '"maxItems"' in request.messages[0]["content"]
    assert request.messages[-1] == {"role": "user", "content": NOTE}


def test_long_capture_is_chunked_and_merged(replay_settings: Callable[..., Settings]) -> None:
    """Each chunk is extracted separately with its offsets; results merge without duplicates."""
    paragraphs = [f"Host{i} runs app{i} in the rack." for i in range(6)]
    text = "\n\n".join(paragraphs)
    records = [
        (
            p,
            json.dumps(
                {
                    "entities": [{"name": "Rack", "role": "object"}],
                    "relationships": [{"source": f"Host{i}", "relation": "RUNS", "target": f"app{i}"}],
                }
            ),
        )
        for i, p in enumerate(paragraphs)
    ]
    settings = replay_settings(records, chunk_chars=40, max_entities=3, max_relationships=1)
    result = build_extractor(settings).extract(text)
    assert len(result.chunks) == 6 and result.calls == 6
    assert [text[s:e] for s, e in result.chunks] == paragraphs
    names = [e.name for e in result.extraction.entities]
    assert names.count("Rack") == 1 and len(names) == 13
    assert len(result.extraction.relationships) == 6


def test_derived_chunk_size_fits_the_context() -> None:
    """Without chunk_chars the chunk size shrinks with num_ctx and stays positive."""
    backend = ScriptBackend([_generation(GOOD)])
    small = Extractor(backend, "m", Settings.model_validate({"model": {"num_ctx": 2048, "num_predict": 256}}))
    large = Extractor(backend, "m", Settings.model_validate({"model": {"num_ctx": 8192, "num_predict": 256}}))
    assert 200 <= small.chunk_chars < large.chunk_chars


# ---------------------------------------------------------------- replay and the registry


def test_replay_unknown_text_is_a_permanent_error(replay_settings: Callable[..., Settings]) -> None:
    """Replay cannot invent output: an unrecorded text raises ModelNotFound naming its digest."""
    settings = replay_settings([(NOTE, GOOD)])
    with pytest.raises(ModelNotFound, match="no recorded output") as caught:
        build_extractor(settings).extract("Something never recorded.")
    assert hashlib.sha256(b"Something never recorded.").hexdigest()[:12] in str(caught.value)


def test_replay_bad_file_is_a_config_error(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    """A malformed replay line is a ConfigError naming the file and line."""
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "output": "b"}\n{"text": "oops"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.jsonl:2"):
        get_backend("replay", make_settings(model={"backend": "replay", "replay_file": path}))


def test_replay_from_the_journal(tmp_path: Path, make_settings: Callable[..., Settings]) -> None:
    """Outputs recorded in the journal, passed in by the caller, answer the same capture text again."""
    from membrane.journal import Journal, read_recorded_outputs
    from tests.support.extraction import make_result

    settings = make_settings(model={"backend": "replay"})
    journal_path = settings.journal.path
    sha = hashlib.sha256(NOTE.encode()).hexdigest()
    with Journal(journal_path) as journal:
        journal.captures.enqueue(sha, "inbox/note.txt", NOTE)
        assert journal.claims.claim() is not None
        journal.extractions.record(
            sha,
            make_result(
                backend="ollama", prompt_version=PROMPT_VERSION, raw_outputs=["broken", GOOD], chunks=[[0, len(NOTE)]]
            ),
        )
    with pytest.raises(ConfigError, match="model.replay_file"):
        get_backend("replay", settings)  # the backends never open the journal themselves
    backend = get_backend("replay", settings, recorded=lambda: read_recorded_outputs(journal_path))
    result = Extractor(backend, "m", Settings()).extract(NOTE)
    assert result.raw_outputs == (GOOD,)


def test_registry_builds_known_backends_and_rejects_unknown(make_settings: Callable[..., Settings]) -> None:
    """Built-ins are registered like plugins; an unknown name is a ConfigError on model.backend."""
    assert {"embedded", "ollama", "replay"} <= set(backend_names())
    register_backend("script-test", lambda settings: ScriptBackend([_generation(GOOD)]))
    assert "script-test" in backend_names()
    result = build_extractor(make_settings(), backend="script-test", model="m").extract(NOTE)
    assert result.backend == "script"
    with pytest.raises(ConfigError) as caught:
        get_backend("nope", make_settings())
    assert caught.value.key == "model.backend"


# ---------------------------------------------------------------- CLI


def _config(tmp_path: Path, records: list[tuple[str, str]]) -> Path:
    replay = _write_jsonl(tmp_path / "replay.jsonl", records)
    config = tmp_path / "membrane.toml"
    config.write_text(
        f'[model]\nbackend = "replay"\nname = "smollm2-135m"\nreplay_file = "{replay}"\n', encoding="utf-8"
    )
    return config


def test_cli_extract_prints_the_extraction(tmp_path: Path) -> None:
    """`membrane extract TEXT` prints the validated Extraction as JSON and exits 0."""
    config = _config(tmp_path, [(NOTE, GOOD)])
    result = CliRunner().invoke(main, ["--config", str(config), "--log-level", "error", "extract", NOTE])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["relationships"] == [{"source": "Alice", "relation": "DEPLOYED_ON", "target": "k3s"}]


def test_cli_extract_raw_from_stdin(tmp_path: Path) -> None:
    """`extract - --raw` reads stdin and adds raw outputs, errors, tokens and timings."""
    config = _config(tmp_path, [(NOTE, "```json\n{broken\n```"), (NOTE, GOOD)])
    result = CliRunner().invoke(
        main, ["--config", str(config), "--log-level", "error", "extract", "-", "--raw"], input=NOTE + "\n"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["raw_outputs"][1] == GOOD and data["calls"] == 2 and len(data["errors"]) == 1
    assert data["model"] == "replay:smollm2-135m" and data["prompt_version"] == PROMPT_VERSION
    assert {"prompt_tokens", "completion_tokens", "seconds", "tokens_per_second", "chunks"} <= set(data)


def test_cli_extract_failure_exits_1(tmp_path: Path) -> None:
    """Output that never validates exits 1 with the reason and a hint."""
    config = _config(tmp_path, [(NOTE, "nope")])
    result = CliRunner().invoke(main, ["--config", str(config), "--log-level", "error", "extract", NOTE])
    assert result.exit_code == 1
    assert "no valid extraction" in result.stderr and "hint:" in result.stderr


def test_cli_extract_unknown_backend_exits_2(tmp_path: Path) -> None:
    """An unknown --backend is a usage error (exit 2)."""
    config = _config(tmp_path, [(NOTE, GOOD)])
    result = CliRunner().invoke(main, ["--config", str(config), "extract", NOTE, "--backend", "nope"])
    assert result.exit_code == 2 and "unknown model backend" in result.stderr


# ---------------------------------------------------------------- grounding

COPIED = json.dumps(
    {
        "entities": [
            {"name": "Alice", "role": "subject"},
            {"name": "k3s", "role": "object"},
            {"name": "Gitea", "role": "object"},
            {"name": "NAS", "role": "object"},
        ],
        "relationships": [
            {"source": "Alice", "relation": "DEPLOYED_ON", "target": "k3s"},
            {"source": "Gitea", "relation": "RUNS_ON", "target": "NAS"},
            {"source": "Alice", "relation": "MOVED", "target": "Gitea"},
        ],
    }
)


def test_ungrounded_entities_and_their_relationships_are_dropped(
    replay_settings: Callable[..., Settings],
) -> None:
    """Names the note never mentions (copied from the prompt's example) are dropped with their facts."""
    settings = replay_settings([(NOTE, COPIED)])
    result = build_extractor(settings).extract(NOTE)
    assert [e.name for e in result.extraction.entities] == ["Alice", "k3s"]
    assert [r.triple for r in result.extraction.relationships] == [("Alice", "DEPLOYED_ON", "k3s")]
    assert result.raw_outputs == (COPIED,)  # the journal still gets what the model said


def test_grounding_can_be_turned_off(replay_settings: Callable[..., Settings]) -> None:
    """grounding_threshold = 0 keeps every validated entity."""
    settings = replay_settings([(NOTE, COPIED)], grounding_threshold=0)
    result = build_extractor(settings).extract(NOTE)
    assert {e.name for e in result.extraction.entities} == {"Alice", "k3s", "Gitea", "NAS"}
    assert len(result.extraction.relationships) == 3


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("Kubernetes clusters", "Docker runs on the production kubernetes cluster."),
        ("DevOps  Team", "It is managed by the devops team."),
        ("東京", "私は東京に住んでいます。"),
        ("Node.js 20", "We upgraded to Node.js 20 last week."),
    ],
)
def test_grounding_tolerates_case_spacing_and_plurals(name: str, text: str) -> None:
    """Small differences of case, spacing or number still count as mentioned."""
    from membrane.extract import ground
    from membrane.schema import Extraction

    extraction = Extraction.parse({"entities": [{"name": name, "role": "subject"}], "relationships": []})
    grounded, dropped = ground(extraction, text, 90)
    assert dropped == ()
    assert grounded == extraction
