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
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

__all__ = ["GrammarLastSampler", "install"]


class GrammarLastSampler:
    """A greedy sampler over one generation: the top token, checked against the grammar alone."""

    def __init__(self, llama: Any, grammar: Any) -> None:
        import llama_cpp
        import numpy as np

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
        self.steps = 0

    def _apply(self, data: Any, size: int) -> None:
        array = self._cpp.llama_token_data_array(data=data, size=size, selected=-1, sorted=False)
        self._cpp.llama_sampler_apply(self._grammar, ctypes.byref(array))

    def sample(self, ctx: Any, idx: int = -1) -> int:
        pointer = self._cpp.llama_get_logits_ith(ctx.ctx, idx)
        logits = self._np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        token = int(logits.argmax())
        self._one[0] = self._cpp.llama_token_data(token, float(logits[token]), 0.0)
        self._apply(self._one, 1)
        self.steps += 1
        if not math.isfinite(self._one[0].logit):  # refused: the grammar over the whole vocabulary
            self.full_checks += 1
            self._all_view["logit"] = logits
            self._all_view["p"] = 0.0
            self._apply(self._all, self._n_vocab)
            token = int(self._all_view["logit"].argmax())
        self._cpp.llama_sampler_accept(self._grammar, token)
        return token

    def close(self) -> None:
        if self._grammar:
            self._cpp.llama_sampler_free(self._grammar)
            self._grammar = None

    def __del__(self) -> None:
        self.close()


def install(llama: Any) -> None:
    """Route `llama`'s grammar-constrained greedy generations through GrammarLastSampler.

    Only calls with a grammar, temperature 0 and no penalties or logits
    processors change; those are exactly the calls where the chain's result
    is the top allowed token.
    """
    original = llama._init_sampler

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
        return GrammarLastSampler(llama, options["grammar"]) if plain else original(**options)

    llama._init_sampler = init_sampler
