"""Greedy constrained decoding that checks only the picked token against the grammar gives the answers
llama-cpp-python's own sampler chain gives, with real tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from membrane.backends.embedded_child import Engine, ModelSpec
from membrane.backends.sampling import GrammarLastSampler
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
