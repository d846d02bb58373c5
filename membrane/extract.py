"""Extraction: the versioned prompt, chunking, the model call, and the repair
loop that turns any model's answer into a valid Extraction or a bounded error.

Per chunk: send the prompt (the JSON schema included, as Ollama's docs advise)
and the same schema as the decoding constraint; clean the answer (drop
<think>...</think> reasoning and ``` fences); parse; validate. An invalid
answer is sent back with the validator's first errors, at most
`extraction.max_repairs` times; then ExtractionFailed carries every raw output
and error. Backend errors pass through untouched: ModelUnavailable stays
retryable, distinct from bad output.

Termination: the schema bounds every array (maxItems) and string
(maxLength/pattern), and the item bound is also sized so that the worst
expected answer fits in num_predict (ENTITY_TOKENS, RELATIONSHIP_TOKENS). An
answer that still hits the cap is a validation error whose repair halves the
item bound.

Long captures are split into chunks (paragraphs, then sentences, then words)
that fit num_ctx next to the prompt, num_predict and one repair turn; each
chunk keeps its character offsets; results are merged with
Extraction.merged_with and the limits re-applied as limit x chunk count.
"""

from __future__ import annotations

import bisect
import json
import re
import time
import unicodedata
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from rapidfuzz import fuzz

from membrane.backends import Backend, Generation, GenerationRequest, RecordedOutputs, get_backend
from membrane.backends.catalogue import prompt_version_for
from membrane.errors import ExtractionFailed, error_key, error_message, validation_line
from membrane.logs import get_logger
from membrane.prompts import PROMPT_VERSION, is_compact
from membrane.records import ExtractionResult
from membrane.schema import (
    UNBOUNDED_RULES,
    Extraction,
    ExtractionRules,
    compact_json_schema,
    extraction_json_schema,
    relation_pattern,
)

if TYPE_CHECKING:
    from membrane.config import Settings

__all__ = [
    "Chunk",
    "Extractor",
    "InvalidOutput",
    "build_extractor",
    "build_messages",
    "clean_output",
    "item_budget",
    "model_schema",
    "parse_output",
    "split_text",
    "system_prompt",
]

log = get_logger(__name__)

# Versions whose system prompt embeds the schema and that may add the example.
_SCHEMA_IN_PROMPT = frozenset({PROMPT_VERSION})

# English prose averages about 4 characters per token with SmolLM2/Llama-style
# BPE vocabularies; 3 leaves room for names, code and accented text. Scripts
# like CJK run near 1 character per token and can overflow (see design notes).
CHARS_PER_TOKEN = 3.0
# Tokens one array item costs in a typical constrained answer, about twice
# what SmolLM2 and Gemma 270M spend (10 and 17), so the item bound keeps the
# whole answer inside num_predict.
ENTITY_TOKENS = 24
RELATIONSHIP_TOKENS = 40
ANSWER_OVERHEAD_TOKENS = 32
# Names the model may write are capped shorter than the 200 characters
# validation allows, so one runaway string cannot eat the token budget.
MODEL_NAME_CHARS = 80
MODEL_RELATION_PATTERN = relation_pattern(40)
# How much of an invalid answer is echoed back in a repair turn.
REPAIR_ECHO_CHARS = 1500
MAX_ERRORS_SHOWN = 3
MIN_CHUNK_CHARS = 200


# ---------------------------------------------------------------- prompt


@cache
def _prompt_file(name: str, version: str = PROMPT_VERSION) -> str:
    return resources.files("membrane.prompts").joinpath(f"{version}.{name}.txt").read_text("utf-8")


# Keys only the decoder needs (it enforces them); left out of the prompt's copy
# of the schema to keep the prompt short.
_DECODER_ONLY_KEYS = frozenset({"additionalProperties", "minLength", "maxLength", "required"})


def _prompt_schema(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _prompt_schema(v) for k, v in node.items() if k not in _DECODER_ONLY_KEYS}
    if isinstance(node, list):
        return [_prompt_schema(v) for v in node]
    return node


def system_prompt(schema: dict[str, Any], version: str = PROMPT_VERSION) -> str:
    """The system message of `version`, with `schema` written in compactly when the version embeds it."""
    text = _prompt_file("system", version)
    if version in _SCHEMA_IN_PROMPT:
        compact = json.dumps(_prompt_schema(schema), separators=(",", ":"), ensure_ascii=False)
        text = text.replace("{schema}", compact)
    return text.strip()


def build_messages(
    text: str, schema: dict[str, Any], *, few_shot: bool = True, version: str = PROMPT_VERSION
) -> list[dict[str, str]]:
    """System prompt, optional worked example (schema-bearing versions only), then the note as the user turn."""
    messages = [{"role": "system", "content": system_prompt(schema, version)}]
    if few_shot and version in _SCHEMA_IN_PROMPT:
        messages.append({"role": "user", "content": _prompt_file("example-note", version).strip()})
        messages.append({"role": "assistant", "content": _prompt_file("example-answer", version).strip()})
    messages.append({"role": "user", "content": text})
    return messages


def _repair_message(errors: list[str], version: str = PROMPT_VERSION) -> str:
    return _prompt_file("repair", version).replace("{errors}", "; ".join(errors)).strip()


def item_budget(rules: ExtractionRules, num_predict: int) -> int:
    """maxItems per array so the worst expected answer fits in num_predict tokens."""
    per_pair = ENTITY_TOKENS + RELATIONSHIP_TOKENS
    fits = max(1, (num_predict - ANSWER_OVERHEAD_TOKENS) // per_pair)
    return min(fits, max(rules.max_entities, rules.max_relationships))


def model_schema(rules: ExtractionRules, max_items: int | None = None, *, compact: bool = False) -> dict[str, Any]:
    """The schema sent to the model: extraction_json_schema (compact_json_schema for a
    compact-answer model), tightened for decoding.

    Arrays get min(rule limit, max_items) items; names at most MODEL_NAME_CHARS;
    a free relation must already be UPPER_SNAKE_CASE (a pattern), an enum when
    a vocabulary is configured.
    """
    schema = compact_json_schema(rules) if compact else extraction_json_schema(rules)
    props = schema["properties"]
    if max_items is not None:
        for key in ("entities", "relationships"):
            props[key]["maxItems"] = max(1, min(props[key]["maxItems"], max_items))
    if compact:
        name, (source, relation, target) = props["entities"]["items"], props["relationships"]["items"]["prefixItems"]
    else:
        name = props["entities"]["items"]["properties"]["name"]
        fields = props["relationships"]["items"]["properties"]
        source, relation, target = fields["source"], fields["relation"], fields["target"]
    name["maxLength"] = source["maxLength"] = target["maxLength"] = MODEL_NAME_CHARS
    if "enum" not in relation:
        relation.clear()
        relation.update({"type": "string", "pattern": MODEL_RELATION_PATTERN})
    return schema


# ---------------------------------------------------------------- output


class InvalidOutput(ValueError):
    """A model answer that is not a valid Extraction; the message feeds repair."""


_THINK_TAG = re.compile(r"<(/?)(think|thinking|reasoning)>", re.I)
_THINK_OPEN = re.compile(r"<(think|thinking|reasoning)>", re.I)
_THINK_CLOSE = re.compile(r"</(think|thinking|reasoning)>", re.I)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)```", re.S)


def _drop_reasoning_blocks(raw: str) -> str:
    """Remove each <think>...</think> block (leftmost opening to the first matching close).

    What re.sub(r"<(think|...)>.*?</\\1>", "", raw, flags=re.S | re.I) does, in
    O(n log n): that regex rescans to the end for every unclosed opening, and
    20,000 of them took 40 s (fuzzing, docs/reliability.md).
    """
    tags = list(_THINK_TAG.finditer(raw))
    closes: dict[str, list[int]] = {}
    for tag in tags:
        if tag.group(1):
            closes.setdefault(tag.group(2).lower(), []).append(tag.start())
    kept, pos = [], 0
    for tag in tags:
        if tag.group(1) or tag.start() < pos:
            continue
        starts = closes.get(tag.group(2).lower(), [])
        i = bisect.bisect_left(starts, tag.end())
        if i < len(starts):
            kept.append(raw[pos : tag.start()])
            pos = starts[i] + len(tag.group(2)) + 3  # "</" + name + ">"
    kept.append(raw[pos:])
    return "".join(kept)


def clean_output(raw: str) -> str:
    """The JSON part of an answer: reasoning blocks and code fences removed."""
    text = _drop_reasoning_blocks(raw)
    closing = list(_THINK_CLOSE.finditer(text))
    if closing:  # the template opened <think> inside the prompt: keep what follows it
        text = text[closing[-1].end() :]
    opening = _THINK_OPEN.search(text)
    if opening:  # reasoning never closed: the budget ran out before any answer
        text = text[: opening.start()]
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1)
    text = text.strip()
    if text and not text.startswith("{") and "{" in text:  # prose around the object
        text = text[text.index("{") : text.rindex("}") + 1] if "}" in text else text[text.index("{") :]
    return text


def _describe_validation(exc: ValidationError) -> str:
    return validation_line(exc, lambda e: f"{error_key(e) or 'answer'}: {error_message(e)}", limit=MAX_ERRORS_SHOWN)


def parse_output(raw: str, rules: ExtractionRules) -> Extraction:
    """Clean, parse and validate an answer; raises InvalidOutput saying what is wrong."""
    text = clean_output(raw)
    if not text or text[0] not in "{[":
        raise InvalidOutput("the answer holds no JSON object")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidOutput(f"not valid JSON: {exc.msg} at character {exc.pos}") from None
    except RecursionError:
        raise InvalidOutput("not valid JSON: nested too deep") from None
    except ValueError as exc:  # a number over Python's int-to-str digit limit
        raise InvalidOutput(f"not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidOutput(f"expected a JSON object with entities and relationships, got {type(data).__name__}")
    try:
        return Extraction.parse(data, rules)
    except ValidationError as exc:
        raise InvalidOutput(f"does not match the schema: {_describe_validation(exc)}") from None


# ---------------------------------------------------------------- chunking


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # character offsets into the capture: text == capture[start:end]
    end: int


_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=\s*\n\s*\n|\s*$)", re.S)
_SENTENCE = re.compile(r"\S.*?(?:[.!?。！？](?=\s|$)|$)", re.S)
_WORD_RUN = re.compile(r"\S+")


def _spans(pattern: re.Pattern[str], text: str, start: int, end: int) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in pattern.finditer(text, start, end) if m.group().strip()]


def _pieces(text: str, start: int, end: int, max_chars: int) -> list[tuple[int, int]]:
    """Spans no longer than max_chars: paragraphs, else sentences, else words, else hard cuts."""
    if end - start <= max_chars:
        return [(start, end)]
    for pattern in (_PARAGRAPH, _SENTENCE, _WORD_RUN):
        spans = _spans(pattern, text, start, end)
        if len(spans) > 1:
            return [piece for s, e in spans for piece in _pieces(text, s, e, max_chars)]
    return [(s, min(s + max_chars, end)) for s in range(start, end, max_chars)]


def split_text(text: str, max_chars: int, overlap: int = 0) -> list[Chunk]:
    """Chunks of at most max_chars, packing whole paragraphs (then sentences) greedily.

    With `overlap` > 0 each chunk after the first also starts `overlap` pieces
    (sentences, or paragraphs) earlier, so a pronoun or "the Pi" at its start
    can be resolved from the sentence before; those facts are merged away.
    """
    stripped = text.strip()
    if not stripped:
        return []
    first = text.index(stripped[0])
    pieces = _pieces(text, first, first + len(stripped), max_chars)
    groups: list[tuple[int, int]] = []  # [first piece, last piece] of each chunk
    for index, (_, end) in enumerate(pieces):
        if groups and end - pieces[groups[-1][0]][0] <= max_chars:
            groups[-1] = (groups[-1][0], index)
        else:
            groups.append((index, index))
    chunks = []
    for number, (low, high) in enumerate(groups):
        start = pieces[max(0, low - overlap) if number else low][0]
        end = pieces[high][1]
        chunks.append(Chunk(text[start:end], start, end))
    return chunks


# ---------------------------------------------------------------- extractor


@dataclass
class _Tally:
    """What the calls for one capture cost and said, across chunks and repairs."""

    raw_outputs: list[str]
    errors: list[str]
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_attempt_valid: bool = True

    def add(self, generation: Generation) -> None:
        self.calls += 1
        self.raw_outputs.append(generation.text)
        self.prompt_tokens += generation.prompt_tokens
        self.completion_tokens += generation.completion_tokens


def _comparable(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def ground(extraction: Extraction, text: str, threshold: float) -> tuple[Extraction, tuple[str, ...]]:
    """Keep the entities `text` mentions, and the relationships between them.

    A name counts as mentioned when it matches some stretch of the text with a
    rapidfuzz partial_ratio of at least `threshold` (after NFKC, case folding
    and whitespace collapsing). Returns the grounded extraction and the names
    dropped. Small models copy names from the prompt's example or invent them;
    such facts have no provenance in the capture.
    """
    if threshold <= 0 or not extraction.entities:
        return extraction, ()
    haystack = _comparable(text)
    kept = {e.name for e in extraction.entities if fuzz.partial_ratio(_comparable(e.name), haystack) >= threshold}
    dropped = tuple(e.name for e in extraction.entities if e.name not in kept)
    if not dropped:
        return extraction, ()
    grounded = Extraction.parse(
        {
            "entities": [e.model_dump() for e in extraction.entities if e.name in kept],
            "relationships": [
                r.model_dump() for r in extraction.relationships if r.source in kept and r.target in kept
            ],
        },
        UNBOUNDED_RULES,
    )
    return grounded, dropped


class Extractor:
    """Extracts a validated Extraction from a capture's text with one model."""

    def __init__(self, backend: Backend, model: str, settings: Settings) -> None:
        self.backend = backend
        self.model = model
        self.rules = settings.extraction.rules()
        self.max_repairs = settings.extraction.max_repairs
        self.few_shot = settings.extraction.few_shot
        self.grounding_threshold = settings.extraction.grounding_threshold
        self.guards = settings.extraction.guards()
        self.num_predict = settings.model.num_predict
        self.temperature = settings.model.temperature
        self.seed = settings.model.seed
        self.num_ctx = settings.model.num_ctx
        n_ctx = getattr(backend, "n_ctx", None)
        if callable(n_ctx):  # an in-process model's context is fixed when it is loaded
            self.num_ctx = min(self.num_ctx, int(n_ctx(model)))
        self.prompt_version = prompt_version_for(settings, backend.name, model)
        self.compact = is_compact(self.prompt_version)  # the answer's shape the model was tuned on
        self.chunk_chars = min(
            settings.extraction.chunk_chars or self._derived_chunk_chars(), self._derived_chunk_chars()
        )
        self.chunk_overlap = settings.extraction.chunk_overlap

    def _messages(self, text: str, schema: dict[str, Any]) -> list[dict[str, str]]:
        return build_messages(text, schema, few_shot=self.few_shot, version=self.prompt_version)

    def _derived_chunk_chars(self) -> int:
        schema = model_schema(self.rules, item_budget(self.rules, self.num_predict), compact=self.compact)
        prompt_chars = sum(len(m["content"]) for m in self._messages("", schema))
        repair_chars = REPAIR_ECHO_CHARS + len(_repair_message(["x" * 200] * MAX_ERRORS_SHOWN, self.prompt_version))
        spare_tokens = self.num_ctx - self.num_predict - (prompt_chars + repair_chars) / CHARS_PER_TOKEN
        return max(MIN_CHUNK_CHARS, int(spare_tokens * CHARS_PER_TOKEN))

    def extract(self, text: str) -> ExtractionResult:
        """Extract from `text`; raises ExtractionFailed, ModelUnavailable or ModelNotFound."""
        started = time.monotonic()
        chunks = split_text(text, self.chunk_chars, self.chunk_overlap)
        tally = _Tally(raw_outputs=[], errors=[])
        parts = [self._extract_chunk(chunk, index, len(chunks), tally) for index, chunk in enumerate(chunks)]
        result = ExtractionResult(
            extraction=self._merge(parts),
            model=self.model,
            backend=self.backend.name,
            prompt_version=self.prompt_version,
            raw_outputs=tuple(tally.raw_outputs),
            errors=tuple(tally.errors),
            calls=tally.calls,
            first_attempt_valid=tally.first_attempt_valid,
            prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens,
            seconds=time.monotonic() - started,
            chunks=tuple((c.start, c.end) for c in chunks),
        )
        log.info(
            "extraction_done",
            model=self.model,
            backend=self.backend.name,
            chunks=len(chunks),
            calls=result.calls,
            repaired=len(result.errors),
            entities=len(result.extraction.entities),
            relationships=len(result.extraction.relationships),
            seconds=round(result.seconds, 3),
        )
        return result

    def _extract_chunk(self, chunk: Chunk, index: int, total: int, tally: _Tally) -> Extraction:
        max_items = item_budget(self.rules, self.num_predict)
        schema = model_schema(self.rules, max_items, compact=self.compact)
        base = self._messages(chunk.text, schema)
        messages = base
        errors: list[str] = []
        for attempt in range(self.max_repairs + 1):
            generation = self.backend.generate(self._request(messages, schema, chunk.text, attempt))
            tally.add(generation)
            try:
                extraction = parse_output(generation.text, self.rules)
            except InvalidOutput as exc:
                error = str(exc)
                if generation.truncated:
                    error = f"cut off at the {self.num_predict}-token cap, give fewer items ({error})"
                    max_items = max(1, max_items // 2)
                    schema = model_schema(self.rules, max_items, compact=self.compact)
                    base = [{"role": "system", "content": system_prompt(schema, self.prompt_version)}, *base[1:]]
                errors.append(error)
                tally.errors.append(error)
                if attempt == 0:
                    tally.first_attempt_valid = False
                log.warning("extraction_output_invalid", model=self.model, attempt=attempt, chunk=index, error=error)
                # Only the latest invalid answer goes back: the context holds one repair turn.
                messages = [
                    *base,
                    {"role": "assistant", "content": generation.text[:REPAIR_ECHO_CHARS]},
                    {"role": "user", "content": _repair_message([error], self.prompt_version)},
                ]
                continue
            grounded, dropped = ground(extraction, chunk.text, self.grounding_threshold)
            if dropped:
                log.info("extraction_ungrounded_dropped", model=self.model, chunk=index, names=list(dropped))
            return grounded
        where = f" (chunk {index + 1} of {total}, characters {chunk.start}-{chunk.end})" if total > 1 else ""
        raise ExtractionFailed(
            f"model {self.model!r} gave no valid extraction in {self.max_repairs + 1} calls{where}; "
            f"last error: {errors[-1]}",
            model=f"{self.backend.name}:{self.model}",
            raw_outputs=tally.raw_outputs,
            errors=tally.errors,
        )

    def _request(
        self, messages: list[dict[str, str]], schema: dict[str, Any], text: str, attempt: int
    ) -> GenerationRequest:
        return GenerationRequest(
            model=self.model,
            messages=tuple(messages),
            schema=schema,
            num_predict=self.num_predict,
            num_ctx=self.num_ctx,
            temperature=self.temperature,
            seed=self.seed,
            text=text,
            attempt=attempt,
            guards=self.guards,
        )

    def _merge(self, parts: list[Extraction]) -> Extraction:
        if len(parts) <= 1:
            return parts[0] if parts else Extraction()
        merged = parts[0]
        for part in parts[1:]:
            merged = merged.merged_with(part)
        # Each chunk was held to the limits; the capture may hold that much per chunk.
        rules = ExtractionRules(
            max_entities=self.rules.max_entities * len(parts),
            max_relationships=self.rules.max_relationships * len(parts),
        )
        return Extraction.parse(merged.model_dump(), rules)


def build_extractor(
    settings: Settings,
    *,
    backend: str | None = None,
    model: str | None = None,
    recorded: RecordedOutputs | None = None,
) -> Extractor:
    """An Extractor for `backend:model`, defaulting to [model] backend and name; `recorded` feeds replay."""
    backend_name = backend or settings.model.backend
    return Extractor(get_backend(backend_name, settings, recorded=recorded), model or settings.model.name, settings)
