"""The training text: exactly what the extractor sends at inference, rendered
by the chat template the inference backend uses, then the answer.

Messages come from extract.build_messages with the tuned prompt version; the
prompt is rendered by llama-cpp-python's own chat formatter for the model's
chat_format (the code that renders it at inference), and tokenised as
llama.cpp does there (BOS only when the formatter added none, special tokens
parsed). The target is the canonical compact JSON of the labelled Extraction
followed by the template's end-of-turn marker, so the model learns to stop.
Prompt tokens are labelled IGNORE_INDEX: the loss is on the answer only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from membrane.errors import ConfigError
from membrane.extract import build_messages
from membrane.prompts import TUNED_PROMPT_VERSION, is_compact
from membrane.train.data import Case

__all__ = [
    "IGNORE_INDEX",
    "Example",
    "HFTokenizer",
    "LlamaTokenizer",
    "Tokenizer",
    "format_prompt",
    "render_case",
    "training_messages",
]

IGNORE_INDEX = -100


class Tokenizer(Protocol):
    def encode(self, text: str, *, add_bos: bool) -> list[int]: ...


class LlamaTokenizer:
    """llama.cpp's tokenizer of a GGUF file (vocabulary only, no weights loaded)."""

    def __init__(self, gguf: Path) -> None:
        from llama_cpp import Llama

        self.llama = Llama(model_path=str(gguf), vocab_only=True, verbose=False)

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))


class HFTokenizer:
    """A Hugging Face tokenizer, for a base given as a model folder (no GGUF to tokenise with)."""

    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))

    def encode(self, text: str, *, add_bos: bool) -> list[int]:
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        bos = self.tokenizer.bos_token_id
        return [bos, *ids] if add_bos and bos is not None else ids


@dataclass(frozen=True)
class Example:
    """One tokenised case: the ids the model reads and the labels its loss is on."""

    case_id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]

    @property
    def answer_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _formatter(chat_format: str) -> Callable[..., Any]:
    from llama_cpp import llama_chat_format

    formatter = getattr(llama_chat_format, "format_" + chat_format.replace("-", "_").replace(".", "_"), None)
    if formatter is None:
        raise ConfigError(
            f"chat format {chat_format!r} has no llama.cpp formatter to render training text with",
            key="model.embedded",
        )
    return formatter  # type: ignore[no-any-return]


def training_messages(text: str, prompt_version: str = TUNED_PROMPT_VERSION) -> list[dict[str, str]]:
    """The messages the extractor sends for `text` to a model tuned on `prompt_version`."""
    # The tuned prompt carries no schema text, so the schema argument is unused there.
    return build_messages(text, {}, few_shot=False, version=prompt_version)


def format_prompt(messages: list[dict[str, str]], chat_format: str) -> tuple[str, str, bool]:
    """(prompt text, end-of-turn marker, whether the template added BOS) as llama.cpp renders them."""
    result = _formatter(chat_format)(messages=messages)
    stop = result.stop[0] if isinstance(result.stop, list) else (result.stop or "")
    return result.prompt, stop.rstrip(), bool(result.added_special)


def render_case(
    case: Case, tokenizer: Tokenizer, chat_format: str, prompt_version: str = TUNED_PROMPT_VERSION
) -> Example:
    """The case as training ids: the rendered prompt (masked) and the answer plus end-of-turn."""
    prompt, stop, added_special = format_prompt(training_messages(case.text, prompt_version), chat_format)
    prompt_ids = tokenizer.encode(prompt, add_bos=not added_special)
    answer_ids = tokenizer.encode(case.answer(compact=is_compact(prompt_version)) + stop, add_bos=False)
    return Example(
        case_id=case.id,
        input_ids=tuple(prompt_ids + answer_ids),
        labels=tuple([IGNORE_INDEX] * len(prompt_ids) + answer_ids),
    )
