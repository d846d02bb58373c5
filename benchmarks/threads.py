"""llama.cpp threads against speed: the embedded child at each thread count, same model,
same prompt, temperature 0, a fixed number of generated tokens.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/threads.py [--model smollm2-135m] [--calls 10] [--threads 1,2]

`[model] threads = 0` (the default) gives every CPU this process may use;
llama-cpp-python's own default is half of them, which is one thread on a 2-core
box. Each call is a fresh prompt (a counter is prepended) so prompt evaluation is
measured too, not only generation. Prints prompt and generation tokens/s per
thread count, and the load average, since a busy machine flattens the gain.
The first call per thread count is an untimed warm-up; a thread count whose
calls generated no tokens is printed as failed (exit 1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from membrane.backends.embedded import close_models, load_model
from membrane.backends.gguf import locate_gguf
from membrane.config import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checks import exit_code, failed_cell, mark  # noqa: E402

NOTE = (
    "Docker is deployed on the production Kubernetes cluster managed by the DevOps team. "
    "Grafana reads from Prometheus, and Loki ships logs to the S3 bucket that Anna maintains."
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", default=f"1,{len(os.sched_getaffinity(0))}")
    args = parser.parse_args()
    config = Settings().model.embedded[args.model]
    path = locate_gguf(config.path)
    print(f"model {args.model}, {args.calls} calls of {args.max_tokens} tokens, load average {os.getloadavg()[0]:.2f}")
    print("| threads | median ms per call | prompt tokens/s | generation tokens/s |")
    print("| ---: | ---: | ---: | ---: |")
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        model = load_model(path, config.chat_format, config.n_ctx, threads=threads)
        times, prompt_rates, gen_rates = [], [], []
        problems: list[str] = []
        for call in range(args.calls + 1):
            messages = [
                {"role": "system", "content": "List the named things in the note."},
                {"role": "user", "content": f"Note {call} of {threads}. {NOTE}"},
            ]
            started = time.perf_counter()
            response = model.chat(messages, schema=None, max_tokens=args.max_tokens)
            elapsed = time.perf_counter() - started
            if call == 0:
                continue  # warm-up
            perf = response["membrane"]  # llama.cpp's own counters, measured in the child
            times.append(elapsed * 1000)
            if perf["prompt_eval_ms"]:
                prompt_rates.append(perf["prompt_eval_tokens"] / perf["prompt_eval_ms"] * 1000)
            if perf["eval_ms"]:
                gen_rates.append(perf["eval_tokens"] / perf["eval_ms"] * 1000)
            if not perf["eval_tokens"] or not perf["prompt_eval_tokens"]:
                problems.append(
                    f"call {call}: {perf['prompt_eval_tokens']} prompt and {perf['eval_tokens']} generated tokens"
                )
        close_models()
        row = mark({"threads": threads}, problems[:3])
        rows.append(row)
        if row["status"] == "failed":
            print(f"| {threads} | {failed_cell(row)} | | |")
            continue
        print(
            f"| {threads} | {statistics.median(times):.0f} | {statistics.median(prompt_rates):.0f} "
            f"| {statistics.median(gen_rates):.1f} |"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    raise SystemExit(exit_code(rows))


if __name__ == "__main__":
    main()
