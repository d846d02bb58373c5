"""Greedy decoding under a grammar that checks only the token it picks.

llama-cpp-python's sampler chain applies the grammar to every token of the
vocabulary before the greedy pick, at each step. With Gemma-3's 262,144-token
vocabulary that check dominates a constrained answer's time. llama.cpp's own
`common_sampler_sample` avoids it: take the most likely token first and test
only that one against the grammar; only when the grammar rejects it, apply the
grammar to the whole vocabulary and pick again. At temperature 0 the result is
the same token either way (the most likely token, if allowed, is also the most
likely allowed one), so answers are unchanged, byte for byte.

`install(llama)` makes a Llama use this sampler for grammar-constrained greedy
calls; every other call keeps llama-cpp-python's own chain. Loaded only in the
embedded child, where llama_cpp is importable.

With `Sampling.guards.endpoints = "entities"` (extraction.endpoints) a second check
rides on the same pick: EndpointGuard keeps each relationship's source and
target (in either answer shape) to a name the answer's entity list already holds, so a relationship
cannot invent a near-variant of an entity ("the Pi" beside "Raspberry Pi").
When the top token breaks it, the next most likely tokens and the first token
of each name that fits are tried, in logit order, against the guard and then
the grammar.

With `Sampling.guards.loops = "end_list"` (extraction.loops) RepeatGuard ends a
list of the answer (entities or relationships, either shape) right after the
model writes an item that list already holds. A small model that repeats one
item tends to repeat it until maxItems: seconds of tokens the validator then
drops as duplicates.
"""

from __future__ import annotations

import ctypes
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from membrane.records import NO_GUARDS

__all__ = ["EndpointGuard", "GrammarLastSampler", "Guard", "Guards", "RepeatGuard", "Sampling", "install"]

# Tokens tried, by logit, when the top token breaks the endpoint guard.
_GUARD_TOP_K = 48
_STRING = rb'"((?:[^"\\]|\\.)*)'  # a JSON string's opening quote and its value so far
_NAME = re.compile(rb'"name"\s*:\s*' + _STRING + b'"')
_ENDPOINT_OPEN = re.compile(rb'"(?:source|target)"\s*:\s*' + _STRING + b"$")
_ENDPOINT_CLOSED = re.compile(rb'"(?:source|target)"\s*:\s*' + _STRING + b'"')
# The compact answer: entity names in one list, relationships as [source, RELATION, target].
_COMPACT_ENTITIES = re.compile(rb'"entities"\s*:\s*\[\s*"')
_COMPACT_NAME = re.compile(_STRING + b'"')
_COMPACT_ENDPOINT = rb'\[\s*(?:"(?:[^"\\]|\\.)*"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*)?' + _STRING
_COMPACT_OPEN = re.compile(_COMPACT_ENDPOINT + b"$")
_COMPACT_CLOSED = re.compile(_COMPACT_ENDPOINT + b'"')
_RELATIONSHIPS = b'"relationships"'
# RepeatGuard: a list's key and opening bracket, and one complete item of each kind.
_LIST_OPEN = re.compile(rb'"(?:entities|relationships)"\s*:\s*\[')
_ITEMS = {
    ord("{"): re.compile(rb'\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}'),  # an object: an entity or a relationship
    ord("["): re.compile(rb'\[(?:[^\[\]"]|"(?:[^"\\]|\\.)*")*\]'),  # a compact relationship
    ord('"'): re.compile(rb'"(?:[^"\\]|\\.)*"'),  # a compact entity name
}
_SPACE = b" \t\r\n"


class Guard(Protocol):
    """A check riding on the greedy pick: sees the answer's bytes, judges a token's bytes."""

    def accept(self, piece: bytes) -> None: ...

    def allows(self, piece: bytes) -> bool: ...

    def completions(self) -> list[bytes]: ...


class EndpointGuard:
    """Watches an answer's JSON text as it is generated and says whether a token's bytes
    keep every relationship endpoint to an entity name the answer gave before its
    relationships (compared as written, JSON escapes and all). Without entities, or
    before the relationships begin, every token passes."""

    def __init__(self, window: int = 1024) -> None:
        self.text = b""
        self._window = window  # bytes looked back for an endpoint key (longer than any name)
        self._start = -1  # where "relationships" begins, once seen
        self._names: tuple[bytes, ...] = ()
        self._open, self._closed = _ENDPOINT_OPEN, _ENDPOINT_CLOSED  # the compact answer's, once seen

    def accept(self, piece: bytes) -> None:
        self.text += piece
        if self._start < 0:
            self._start = self.text.find(_RELATIONSHIPS)
            if self._start >= 0:
                entities = _COMPACT_ENTITIES.search(self.text, 0, self._start)
                if entities is not None:  # the compact answer
                    self._open, self._closed = _COMPACT_OPEN, _COMPACT_CLOSED
                    names = _COMPACT_NAME.findall(self.text, entities.end() - 1, self._start)
                else:
                    names = _NAME.findall(self.text, 0, self._start)
                self._names = tuple(dict.fromkeys(names))

    def allows(self, piece: bytes) -> bool:
        if self._start < 0 or not self._names:
            return True
        text = self.text + piece
        begin = max(self._start, len(self.text) - self._window)
        for closed in self._closed.finditer(text, begin):
            if closed.end() > len(self.text) and closed.group(1) not in self._names:
                return False  # the token ends an endpoint that is no entity's name
        partial = self._open_endpoint(text)
        return partial is None or any(n.startswith(partial) for n in self._names)

    def completions(self) -> list[bytes]:
        """What may follow an open endpoint: the rest of each name it begins, with the closing quote."""
        partial = self._open_endpoint(self.text) if self._start >= 0 else None
        if partial is None:
            return []
        return [n[len(partial) :] + b'"' for n in self._names if n.startswith(partial)]

    def _open_endpoint(self, text: bytes) -> bytes | None:
        """The value written so far of a source or target `text` leaves open (within the window), else None."""
        found = self._open.search(text, max(self._start, len(self.text) - self._window))
        return found.group(1) if found is not None else None


def _item_key(item: bytes) -> object:
    """What makes two items of one list the same: an entity's name, a relationship's triple."""
    try:
        value = json.loads(item)
    except ValueError:
        return item
    if isinstance(value, dict):
        if "name" in value:
            return ("name", value["name"])
        return ("rel", value.get("source"), value.get("relation"), value.get("target"))
    return json.dumps(value)


def _open_list(text: bytes) -> tuple[list[object], bytes] | None:
    """For the last list `text` opened and has not closed: the keys of its complete items and
    the bytes after the last of them; None outside a list."""
    opened = max(_LIST_OPEN.finditer(text), key=lambda m: m.start(), default=None)
    if opened is None:
        return None
    keys: list[object] = []
    at, end = opened.end(), len(text)
    tail_from = at
    while True:
        while at < end and (text[at] in _SPACE or text[at] == ord(",")):
            at += 1
        if at >= end:
            return keys, text[tail_from:]
        if text[at] == ord("]"):
            return None  # the list is closed
        pattern = _ITEMS.get(text[at])
        item = pattern.match(text, at) if pattern is not None else None
        if item is None:  # an item still being written
            return keys, text[tail_from:]
        keys.append(_item_key(item.group(0)))
        at = tail_from = item.end()


class RepeatGuard:
    """Ends a list right after an item it already holds: once the last complete item of the
    open list repeats an earlier one, only the list's closing bracket may follow."""

    def __init__(self) -> None:
        self.text = b""

    def accept(self, piece: bytes) -> None:
        self.text += piece

    def allows(self, piece: bytes) -> bool:
        state = _open_list(self.text + piece)
        if state is None:
            return True
        keys, tail = state
        return not (keys and keys[-1] in keys[:-1] and b"," in tail)

    def completions(self) -> list[bytes]:
        state = _open_list(self.text)
        if state is None:
            return []
        keys, _ = state
        return [b"]"] if keys and keys[-1] in keys[:-1] else []


class Guards:
    """Several guards as one: a token passes when every guard allows it."""

    def __init__(self, guards: Sequence[Guard]) -> None:
        self.guards = tuple(guards)

    def accept(self, piece: bytes) -> None:
        for guard in self.guards:
            guard.accept(piece)

    def allows(self, piece: bytes) -> bool:
        return all(guard.allows(piece) for guard in self.guards)

    def completions(self) -> list[bytes]:
        return [c for guard in self.guards for c in guard.completions()]


class Sampling:
    """The switches `install` reads for each generation: set before a call."""

    def __init__(self) -> None:
        self.guards = NO_GUARDS  # which guards ride on the greedy pick


class GrammarLastSampler:
    """A greedy sampler over one generation: the top token, checked against the grammar alone."""

    def __init__(self, llama: Any, grammar: Any, guard: Guard | None = None) -> None:
        import llama_cpp
        import numpy as np

        self._llama = llama
        self._guard = guard
        self._pieces: dict[int, bytes] = {}
        self._cpp = llama_cpp
        self._np = np
        self._n_vocab = int(llama.n_vocab())
        self._grammar = llama_cpp.llama_sampler_init_grammar(
            llama._model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self._grammar:
            raise ValueError("llama.cpp could not compile the grammar")
        self._one = (llama_cpp.llama_token_data * 1)()
        self._all = (llama_cpp.llama_token_data * self._n_vocab)()
        # A numpy view of the full candidate array, to fill ids and logits without a Python loop.
        dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        self._all_view = np.frombuffer(memoryview(self._all).cast("B"), dtype=dtype)
        self._all_view["id"] = np.arange(self._n_vocab, dtype=np.intc)
        self.full_checks = 0  # steps where the top token was refused (for tests and benchmarks)
        self.guard_picks = 0  # steps where the endpoint guard moved the pick off the top token
        self.steps = 0

    def _apply(self, data: Any, size: int) -> None:
        array = self._cpp.llama_token_data_array(data=data, size=size, selected=-1, sorted=False)
        self._cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))

    def _piece(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = bytes(self._llama.detokenize([token]))
        return piece

    def _grammar_allows(self, token: int, logit: float) -> bool:
        self._one[0] = self._cpp.llama_token_data(token, logit, 0.0)
        self._apply(self._one, 1)
        return math.isfinite(self._one[0].logit)

    def sample(self, ctx: Any, idx: int = -1) -> int:
        pointer = self._cpp.llama_get_logits_ith(ctx.ctx, idx)
        logits = self._np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        token = int(logits.argmax())
        self.steps += 1
        guard = self._guard
        if guard is not None and not guard.allows(self._piece(token)):
            token = self._guarded(logits, guard, token)
        elif not self._grammar_allows(token, float(logits[token])):  # the grammar over the whole vocabulary
            self.full_checks += 1
            self._all_view["logit"] = logits
            self._all_view["p"] = 0.0
            self._apply(self._all, self._n_vocab)
            token = int(self._all_view["logit"].argmax())
            if guard is not None and not guard.allows(self._piece(token)):
                token = self._guarded(logits, guard, token)
        self._cpp.llama_sampler_accept(self._grammar, token)
        if guard is not None:
            guard.accept(self._piece(token))
        return token

    def _guarded(self, logits: Any, guard: Guard, fallback: int) -> int:
        """The most likely token that both the guard and the grammar allow, among the top
        tokens and the first token of each name the open endpoint may still become;
        `fallback` (the grammar's own pick) when none is."""
        top = self._np.argpartition(logits, -_GUARD_TOP_K)[-_GUARD_TOP_K:]
        firsts = [self._llama.tokenize(rest, add_bos=False, special=False)[:1] for rest in guard.completions()]
        candidates = {int(t) for t in top} | {int(t[0]) for t in firsts if t}
        for token in sorted(candidates, key=lambda t: -float(logits[t])):
            if guard.allows(self._piece(token)) and self._grammar_allows(token, float(logits[token])):
                self.guard_picks += 1
                return token
        return fallback

    def close(self) -> None:
        if self._grammar:
            self._cpp.llama_sampler_free(self._grammar)
            self._grammar = None

    def __del__(self) -> None:
        self.close()


def install(llama: Any) -> Sampling:
    """Route `llama`'s grammar-constrained greedy generations through GrammarLastSampler.

    Only calls with a grammar, temperature 0 and no penalties or logits
    processors change; those are exactly the calls where the chain's result
    is the top allowed token. The returned Sampling switches the endpoint
    guard on for the calls that follow.
    """
    original: Callable[..., Any] = llama._init_sampler
    switches = Sampling()

    def init_sampler(**options: Any) -> Any:
        plain = (
            options.get("grammar") is not None
            and options.get("temp") == 0.0
            and options.get("logits_processor") is None
            and options.get("repeat_penalty", 1.0) == 1.0
            and options.get("frequency_penalty", 0.0) == 0.0
            and options.get("presence_penalty", 0.0) == 0.0
            and options.get("mirostat_mode", 0) == 0
        )
        if not plain:
            return original(**options)
        guards: list[Guard] = []
        if switches.guards.endpoints == "entities":
            guards.append(EndpointGuard())
        if switches.guards.loops == "end_list":
            guards.append(RepeatGuard())
        guard = guards[0] if len(guards) == 1 else Guards(guards) if guards else None
        return GrammarLastSampler(llama, options["grammar"], guard)

    llama._init_sampler = init_sampler
    return switches
