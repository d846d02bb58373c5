"""Prefix caching on the gold set: latency per capture (p50/p95) and prompt tokens
evaluated per model call, with the warm child's prefix reuse off and on.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/prefix_cache.py [--cases 24] [--model smollm2-135m]

Each capture goes through the real Extractor (shipped settings: worked example,
schema, repairs) and the embedded backend. "off" resets the llama.cpp context
before every call, so the whole prompt (system prompt, worked example, capture)
is evaluated each time; "on" is the shipped child, which keeps one Llama object
and so the KV cache of the longest token prefix shared with the previous call.
Both run in their own child, and alternate capture by capture (in swapped order
each time) so that load from other work on the machine falls on both alike.

Prompt tokens evaluated are llama.cpp's own counter, llama_perf_context().n_p_eval
(tokens decoded in prompt batches), reset before and read after each call in the
child; prompt tokens are the call's usage.prompt_tokens. Only aggregates are
printed: the gold set is for measuring, never for tuning on single cases.
Each mode first extracts one untimed warm-up note (not a gold case), whose
calls are left out of the counters. A mode whose calls evaluated no prompt
tokens, or that extracted nothing, is printed as failed (exit 1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from membrane.backends.embedded import EmbeddedBackend, LoadedModel, close_models
from membrane.config import Settings
from membrane.errors import ExtractionFailed
from membrane.extract import Extractor
from membrane.score import load_gold

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from checks import exit_code, failed_cell, mark, minimum_problems  # noqa: E402

WARMUP_NOTE = "Warm-up: Alice deployed Grafana on the Raspberry Pi."


class Mode:
    """One configuration: its extractor, its child and the figures gathered so far."""

    def __init__(self, name: str, settings: Settings, model: str, reuse_prefix: bool) -> None:
        self.name = name
        backend = EmbeddedBackend(settings, reuse_prefix=reuse_prefix)
        self.loaded: LoadedModel = backend.load(model)
        self.extractor = Extractor(backend, model, settings)
        self.latencies: list[float] = []
        self.failed = 0

    def warm_up(self) -> None:
        """One untimed extraction (first decode, grammar), then the counters start from zero."""
        try:
            self.extractor.extract(WARMUP_NOTE)
        except ExtractionFailed:
            pass
        self.loaded.calls = self.loaded.prompt_tokens = self.loaded.prompt_eval_tokens = 0

    def run(self, text: str) -> None:
        started = time.perf_counter()
        try:
            self.extractor.extract(text)
        except ExtractionFailed:
            self.failed += 1
        self.latencies.append(time.perf_counter() - started)

    def problems(self) -> list[str]:
        """Why this mode's figures are not a result: no calls or prompt tokens counted, nothing extracted."""
        loaded = self.loaded
        return minimum_problems(
            {"model calls": len(self.latencies), "prompt tokens": 1},
            {"model calls": loaded.calls, "prompt tokens": loaded.prompt_tokens},
        ) + ([f"all {self.failed} extractions failed"] if self.failed == len(self.latencies) else [])

    def row(self) -> str:
        status = mark({"mode": self.name}, self.problems())
        if status["status"] == "failed":
            return f"| {self.name} | {failed_cell(status)} | | | | | | | |"
        loaded, lat = self.loaded, self.latencies
        p95 = statistics.quantiles(lat, n=20)[-1] if len(lat) > 1 else lat[0]
        per_call = loaded.prompt_tokens / loaded.calls
        evaluated = loaded.prompt_eval_tokens / loaded.calls
        return (
            f"| {self.name} | {len(lat)} | {loaded.calls} | {statistics.median(lat):.2f} | {p95:.2f} | "
            f"{per_call:.0f} | {evaluated:.0f} | {100 * (1 - evaluated / per_call):.0f}% | {self.failed} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--gold", type=Path, default=ROOT / "config" / "eval" / "gold.jsonl")
    args = parser.parse_args()
    settings = Settings()
    cases = load_gold(args.gold)[: args.cases]
    modes = [
        Mode("off (reset every call)", settings, args.model, False),
        Mode("on (warm child, prefix reuse)", settings, args.model, True),
    ]
    for mode in modes:
        mode.warm_up()
    for index, case in enumerate(cases):
        for mode in modes if index % 2 == 0 else reversed(modes):
            mode.run(case.text)
    close_models()
    print(f"model {args.model}, first {len(cases)} gold cases, shipped extraction settings")
    print(
        "| prefix reuse | captures | model calls | p50 s/capture | p95 s/capture | prompt tokens/call "
        "| evaluated tokens/call | reused | failed |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode in modes:
        print(mode.row())
    raise SystemExit(exit_code([mark({}, mode.problems()) for mode in modes]))


if __name__ == "__main__":
    main()
