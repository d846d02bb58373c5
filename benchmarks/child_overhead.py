"""What the supervised child process costs per call: ms per chat completion through the
child (JSON frames over a pipe, one lock) versus the same call in this process
(the Engine the child runs, called directly: what the embedded backend did before).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/child_overhead.py [--calls 200] [--model smollm2-135m]

Same model, same short prompt, temperature 0 and max_tokens 1 so that generation
time does not hide the overhead; the prompt repeats, so llama.cpp reuses all but
one of its tokens and each call is one decode plus one sampled token. The two
paths alternate in rounds of 10 calls so that a busy machine slows both alike.
Also printed: the time to start a child and load the model in it, against the
in-process load; the part of the child path spent outside the child's chat
(pipe, JSON, the two process wake-ups: measured per call as the parent's time
minus the child's own chat_ms); and the load average, since on a busy machine
the wake-ups, not the pipe, are what costs. Both paths are warmed up with 5
untimed calls; every timed call's answer is checked (a choice, prompt tokens
counted), and a path whose answers are missing is printed as failed (exit 1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from membrane.backends.embedded import close_models, load_model
from membrane.backends.embedded_child import Engine, ModelSpec
from membrane.backends.gguf import locate_gguf
from membrane.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checks import exit_code, failed_cell, mark  # noqa: E402

MESSAGES = [{"role": "system", "content": "Answer with one word."}, {"role": "user", "content": "Say yes."}]
ROUND = 10


def answer_problem(response: dict[str, Any]) -> str | None:
    """Why a chat response is not a completed call: no choice, or no prompt tokens counted."""
    if not response.get("choices"):
        return "a call returned no choice"
    if not (response.get("usage") or {}).get("prompt_tokens"):
        return "a call counted no prompt tokens"
    return None


def _in_process(engine: Engine, max_tokens: int) -> dict[str, Any]:
    return engine.chat({"messages": MESSAGES, "schema": None, "max_tokens": max_tokens, "temperature": 0.0, "seed": 0})


def _timed(call: Any, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-tokens", type=int, default=1)
    args = parser.parse_args()
    config = Settings().model.embedded[args.model]
    path = locate_gguf(config.path)
    spec = ModelSpec(str(path), config.chat_format, config.n_ctx)

    started = time.perf_counter()
    engine = Engine(spec)
    load_in_process = time.perf_counter() - started
    started = time.perf_counter()
    child = load_model(path, config.chat_format, config.n_ctx)
    load_child = time.perf_counter() - started

    inside: list[float] = []
    problems: dict[str, set[str]] = {"in process": set(), "child process": set()}

    def checked(path: str, response: dict[str, Any]) -> None:
        problem = answer_problem(response)
        if problem:
            problems[path].add(problem)

    def via_child() -> None:
        response = child.chat(MESSAGES, schema=None, max_tokens=args.max_tokens)
        inside.append(response["membrane"]["chat_ms"])
        checked("child process", response)

    def direct() -> None:
        checked("in process", _in_process(engine, args.max_tokens))

    load_before = os.getloadavg()[0]
    for warm in (direct, via_child):
        _timed(warm, 5)
    inside.clear()
    for found in problems.values():
        found.clear()
    inproc, piped = [], []
    for _ in range(max(1, args.calls // ROUND)):
        inproc += _timed(direct, ROUND)
        piped += _timed(via_child, ROUND)
    engine.close()
    close_models()

    print(
        f"model {args.model} ({path.name}), {len(inproc)} calls each, max_tokens {args.max_tokens}, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print(f"load: in process {load_in_process:.2f} s, child start + load {load_child:.2f} s")
    print("| path | mean ms/call | median ms/call | p95 ms/call |")
    print("| --- | --- | --- | --- |")
    rows = []
    for name, times in (("in process", inproc), ("child process", piped)):
        row = mark({"path": name}, sorted(problems[name]))
        rows.append(row)
        if row["status"] == "failed":
            print(f"| {name} | {failed_cell(row)} | | |")
            continue
        p95 = statistics.quantiles(times, n=20)[-1]
        print(f"| {name} | {statistics.fmean(times):.2f} | {statistics.median(times):.2f} | {p95:.2f} |")
    print(
        f"difference: {statistics.fmean(piped) - statistics.fmean(inproc):+.2f} ms/call mean, "
        f"{statistics.median(piped) - statistics.median(inproc):+.2f} ms/call median"
    )
    outside = [total - own for total, own in zip(piped, inside, strict=True)]
    print(
        f"child path outside the child's chat (pipe, JSON, wake-ups): median {statistics.median(outside):.2f} ms, "
        f"mean {statistics.fmean(outside):.2f} ms"
    )
    raise SystemExit(exit_code(rows))


if __name__ == "__main__":
    main()
