"""Greedy constrained decoding that checks only the picked token against the grammar gives the answers
llama-cpp-python's own sampler chain gives, with real tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from membrane.backends.embedded_child import Engine, ModelSpec
from membrane.backends.sampling import EndpointGuard, GrammarLastSampler, Guards, RepeatGuard
from membrane.extract import build_messages, model_schema
from membrane.schema import ExtractionRules

pytestmark = [pytest.mark.model, pytest.mark.slow]

TEXTS = (
    "Docker is deployed on the production Kubernetes cluster managed by the DevOps team.",
    "Grafana runs on the Raspberry Pi; Prometheus scrapes the NAS every minute.",
    "Maria works at Siemens in Munich and is married to Tom.",
)


def _answers(engine: Engine, schema: dict[str, object]) -> list[str]:
    answers = []
    for text in TEXTS:
        request = {"messages": build_messages(text, schema), "schema": schema, "max_tokens": 160, "temperature": 0.0}
        answers.append(engine.chat(request)["choices"][0]["message"]["content"])
    return answers


@pytest.mark.parametrize("model", ["tiny_model_path", "gemma_model_path"])
def test_grammar_last_sampling_gives_the_chains_answers(model: str, request: pytest.FixtureRequest) -> None:
    """The child's sampler and llama-cpp-python's chain (grammar over the whole vocabulary) answer alike,
    token for token, and the child's sampler is the one that ran."""
    path: Path = request.getfixturevalue(model)
    chat_format = "chatml" if model == "tiny_model_path" else "gemma"
    schema = model_schema(ExtractionRules(), max_items=4)
    spec = ModelSpec(str(path), chat_format, 2048, reuse_prefix=False)
    ours, chain = Engine(spec), Engine(spec)
    try:
        del chain.llama._init_sampler  # back to the class's own sampler chain
        assert _answers(ours, schema) == _answers(chain, schema)
        assert isinstance(ours.llama._sampler, GrammarLastSampler) and ours.llama._sampler.steps > 0
        assert not isinstance(chain.llama._sampler, GrammarLastSampler)
    finally:
        ours.close()
        chain.close()


# ---------------------------------------------------------------- relationship endpoints kept to entity names

ANSWER_HEAD = b'{"entities": [{"name": "Raspberry Pi", "role": "subject"}, {"name": "Debian 12", "role": "object"}], '


def _guard_at(text: bytes) -> EndpointGuard:
    guard = EndpointGuard()
    for i in range(0, len(text), 3):  # fed in pieces, as tokens arrive
        guard.accept(text[i : i + 3])
    return guard


def test_endpoint_guard_passes_everything_before_the_relationships() -> None:
    guard = _guard_at(b'{"entities": [{"name": "Raspberry Pi", "role": "sub')
    assert guard.allows(b'ject"}') and guard.allows(b"anything") and guard.completions() == []


def test_endpoint_guard_keeps_an_open_endpoint_to_a_name_prefix() -> None:
    guard = _guard_at(ANSWER_HEAD + b'"relationships": [{"source": "Rasp')
    assert guard.allows(b"berry") and guard.allows(b"berry Pi") and guard.allows(b'berry Pi", ')
    assert not guard.allows(b"utin") and not guard.allows(b'berry"') and not guard.allows(b'"')
    assert guard.completions() == [b'berry Pi"']


def test_endpoint_guard_checks_the_target_and_a_token_that_opens_the_value() -> None:
    guard = _guard_at(ANSWER_HEAD + b'"relationships": [{"source": "Raspberry Pi", "relation": "RUNS", "target":')
    assert guard.allows(b' "Deb') and guard.allows(b' "') and not guard.allows(b' "the Pi"')
    assert not guard.allows(b' "Ubuntu')
    assert sorted(_guard_at(guard.text + b' "').completions()) == [b'Debian 12"', b'Raspberry Pi"']


def test_endpoint_guard_leaves_the_relation_type_free() -> None:
    guard = _guard_at(ANSWER_HEAD + b'"relationships": [{"source": "Raspberry Pi", "relation": "')
    assert guard.allows(b"RUNS_ON") and guard.allows(b'RUNS_ON", ')


def test_endpoint_guard_without_entities_passes_everything() -> None:
    guard = _guard_at(b'{"entities": [], "relationships": [{"source": "')
    assert guard.allows(b"Anything") and guard.completions() == []


COMPACT_HEAD = b'{"entities": ["Raspberry Pi", "Debian 12"], '


def test_endpoint_guard_reads_the_compact_answer() -> None:
    """In the compact shape the first and third strings of each relationship list are the endpoints."""
    guard = _guard_at(COMPACT_HEAD + b'"relationships": [["Rasp')
    assert guard.allows(b"berry Pi") and not guard.allows(b"utin") and guard.completions() == [b'berry Pi"']
    guard = _guard_at(guard.text + b'berry Pi", "')
    assert guard.allows(b'RUNS_ON", ') and guard.completions() == []  # the relation type stays free
    guard = _guard_at(guard.text + b'RUNS_ON", "')
    assert guard.allows(b"Deb") and not guard.allows(b'the Pi"')
    assert sorted(guard.completions()) == [b'Debian 12"', b'Raspberry Pi"']
    guard = _guard_at(guard.text + b'Debian 12"], ["')
    assert not guard.allows(b"Ubuntu") and guard.allows(b"Debian")


def test_guarded_answers_name_only_their_entities(gemma_model_path: Path) -> None:
    """With the tuned default and extraction.endpoints = "entities", every relationship's source and target
    is one of the answer's own entity names, and the answers still parse."""
    adapter = Path(__file__).parents[1] / "membrane" / "models" / "gemma3-270m-membrane" / "adapter.gguf"
    schema = model_schema(ExtractionRules(), max_items=6)
    engine = Engine(ModelSpec(str(gemma_model_path), "gemma", 2048, lora_path=str(adapter), reuse_prefix=False))
    texts = (
        *TEXTS,
        "Alice set up Grafana on the Pi. It now watches the NAS and the router that the ISP installed.",
    )
    relationships = 0
    try:
        for text in texts:
            request = {
                "messages": build_messages(text, schema),
                "schema": schema,
                "max_tokens": 300,
                "temperature": 0.0,
                "guards": {"endpoints": "entities"},
            }
            answer = json.loads(engine.chat(request)["choices"][0]["message"]["content"])
            names = {e["name"] for e in answer["entities"]}
            for rel in answer["relationships"]:
                assert rel["source"] in names and rel["target"] in names, (rel, names)
            relationships += len(answer["relationships"])
        assert isinstance(engine.llama._sampler, GrammarLastSampler) and engine.llama._sampler._guard is not None
    finally:
        engine.close()
    assert relationships > 0


def test_compact_schema_answers_parse_with_the_guard(tiny_model_path: Path) -> None:
    """A real model decoding under the compact schema (extract-t2) writes names and three-item lists that
    parse as Extractions; with the guard on, every endpoint is one of the answer's names."""
    from membrane.extract import parse_output
    from membrane.prompts import COMPACT_PROMPT_VERSION

    rules = ExtractionRules()
    schema = model_schema(rules, max_items=4, compact=True)
    engine = Engine(ModelSpec(str(tiny_model_path), "chatml", 2048, reuse_prefix=False))
    relationships = 0
    try:
        for text in TEXTS:
            request = {
                "messages": build_messages(text, schema, version=COMPACT_PROMPT_VERSION),
                "schema": schema,
                "max_tokens": 200,
                "temperature": 0.0,
                "guards": {"endpoints": "entities"},
            }
            content = engine.chat(request)["choices"][0]["message"]["content"]
            answer = json.loads(content)
            assert all(isinstance(name, str) for name in answer["entities"])
            assert all(isinstance(rel, list) and len(rel) == 3 for rel in answer["relationships"])
            names = set(answer["entities"])
            assert all(rel[0] in names and rel[2] in names for rel in answer["relationships"]), answer
            extraction = parse_output(content, rules)
            assert [e.name for e in extraction.entities][: len(names)] == list(dict.fromkeys(answer["entities"]))
            relationships += len(answer["relationships"])
    finally:
        engine.close()
    assert relationships > 0


# ---------------------------------------------------------------- a list ends once an item repeats


def _repeat_guard_at(text: bytes) -> RepeatGuard:
    guard = RepeatGuard()
    guard.accept(text)
    return guard


def test_repeat_guard_lets_only_the_closing_bracket_follow_a_repeated_item() -> None:
    """Objects: a repeated entity name (any role) closes the list; a new item keeps it open."""
    head = b'{"entities":[{"name":"A","role":"subject"},{"name":"B","role":"object"}'
    guard = _repeat_guard_at(head)
    assert guard.allows(b",") and guard.completions() == []
    guard = _repeat_guard_at(head + b',{"name":"A","role":"object"}')
    assert not guard.allows(b",") and not guard.allows(b"},") and guard.allows(b"]") and guard.allows(b"],")
    assert guard.completions() == [b"]"]
    guard = _repeat_guard_at(head + b',{"name":"A","role":"object"}],"relationships":[')
    assert guard.allows(b'{"') and guard.completions() == []  # the next list starts afresh


def test_repeat_guard_reads_the_compact_answer_and_strings_with_brackets() -> None:
    """Compact: a repeated [source, RELATION, target] closes the relationships; brackets inside names are text."""
    guard = _repeat_guard_at(b'{"entities":["A]","B{"],"relationships":[["A]","USES","B{"],["A]","USES","B{"')
    assert guard.allows(b"]") and guard.allows(b"]]") and not guard.allows(b"],")
    guard = _repeat_guard_at(guard.text + b"]")
    assert guard.completions() == [b"]"] and not guard.allows(b",")
    guard = _repeat_guard_at(b'{"entities":["A","A"')
    assert not guard.allows(b",") and guard.allows(b"]")


def test_guards_combine_by_all_allowing() -> None:
    both = Guards([EndpointGuard(), RepeatGuard()])
    both.accept(b'{"entities":[{"name":"A","role":"subject"},{"name":"A","role":"subject"}')
    assert not both.allows(b",") and both.allows(b"]") and both.completions() == [b"]"]


def test_a_real_model_stops_a_repeating_list_with_the_guard(tiny_model_path: Path) -> None:
    """The tiny model repeats items on a repetitive note; with extraction.loops = "end_list" no list
    holds a repeat except as its last item, and the answer costs fewer tokens."""
    schema = model_schema(ExtractionRules(), max_items=12)
    text = "The NAS backs up the NAS. The NAS, the NAS and the NAS run Debian on the NAS."
    runs = {}
    for loops in ("allow", "end_list"):
        engine = Engine(ModelSpec(str(tiny_model_path), "chatml", 2048, reuse_prefix=False))
        try:
            request = {
                "messages": build_messages(text, schema),
                "schema": schema,
                "max_tokens": 300,
                "temperature": 0.0,
                "guards": {"loops": loops},
            }
            response = engine.chat(request)
            guard = engine.llama._sampler._guard
            assert isinstance(guard, RepeatGuard) if loops == "end_list" else guard is None
        finally:
            engine.close()
        answer = json.loads(response["choices"][0]["message"]["content"])
        runs[loops] = (answer, response["usage"]["completion_tokens"])
    (loose, loose_tokens), (guarded, guarded_tokens) = runs["allow"], runs["end_list"]
    names = [e["name"] for e in loose["entities"]]
    assert len(names) - len(set(names)) >= 2  # without the guard the model goes on repeating
    for items in ([e["name"] for e in guarded["entities"]], [json.dumps(r) for r in guarded["relationships"]]):
        assert len(set(items[:-1])) == len(items[:-1])
    assert guarded_tokens < loose_tokens
