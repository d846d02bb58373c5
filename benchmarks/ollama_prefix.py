"""Prefix caching on Ollama: does keep_alive keep the model loaded, and does the
server reuse the KV state of the system prompt (with its worked example) that
every extraction call starts with?

    eval "$(scripts/ollama-local env)"
    .venv/bin/python benchmarks/ollama_prefix.py [--model smollm2-135m] [--cases 6] [--num-predict 128]

Sends MemBrane's real extraction requests (system prompt, worked example, the
note, the schema as format) for the first --cases texts of the gold set, in
three modes, each after unloading the model:
- cold: keep_alive=0, so the model is unloaded after every call (reload + the
  whole prompt evaluated each time);
- warm: keep_alive=10m, the daemon's default: the model stays loaded and the
  runner keeps the previous prompt's KV cache, so only the tokens after the
  shared prefix are evaluated;
- repeat: warm, the same note twice in a row (the upper bound: all but the
  last prompt token reused).
Prints, per mode, the prompt's tokens (prompt_eval_count: Ollama 0.17 counts the
whole prompt even when it reuses a cached prefix, so the reuse shows in the
prompt eval time, not in the count), load time and latency per call (p50/p95),
from the server's own durations; each call's figures go to stderr as it ends.
Every answer is checked (tokens generated, JSON unless cut at num_predict); a
mode with a bad answer is printed as failed (exit 1). The cold mode has no
warm-up by design; the warm modes leave their first call out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import ollama

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from checks import exit_code, failed_cell, mark  # noqa: E402

GOLD = ROOT / "config" / "eval" / "gold.jsonl"
NS = 1e9


def texts(cases: int) -> list[str]:
    lines = GOLD.read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[:cases]]


def request(text: str, num_predict: int) -> tuple[list[dict[str, str]], dict[str, Any], dict[str, Any]]:
    """Messages, schema and options exactly as the extractor sends them."""
    from membrane.config import Settings
    from membrane.extract import build_messages, item_budget, model_schema

    settings = Settings()
    rules = settings.extraction.rules()
    schema = model_schema(rules, item_budget(rules, settings.model.num_predict))
    options = {
        "temperature": settings.model.temperature,
        "num_predict": num_predict,
        "num_ctx": settings.model.num_ctx,
        "seed": settings.model.seed,
    }
    return build_messages(text, schema), schema, options


def unload(client: ollama.Client, model: str) -> None:
    client.generate(model=model, prompt="", keep_alive=0)
    for _ in range(50):
        if not any(m.model.startswith(model) for m in client.ps().models):
            return
        time.sleep(0.1)


def residency(client: ollama.Client, model: str) -> str:
    """Whether /api/ps lists the model now, and for how much longer."""
    for running in client.ps().models:
        if running.model and running.model.startswith(model) and running.expires_at is not None:
            left = running.expires_at.timestamp() - time.time()
            return f"loaded, expires in {left:.0f} s" if left >= 1 else "unloading (expires now)"
    return "not loaded"


def run(
    client: ollama.Client, args: argparse.Namespace, notes: list[str], keep_alive: str | int
) -> list[dict[str, Any]]:
    model = args.model
    unload(client, model)
    rows = []
    for text in notes:
        messages, schema, options = request(text, args.num_predict)
        started = time.monotonic()
        response = client.chat(
            model=model, messages=messages, format=schema, options=options, keep_alive=keep_alive, stream=False
        )
        rows.append(
            {
                "problem": answer_problem(response),
                "wall_s": time.monotonic() - started,
                "load_s": (response.load_duration or 0) / NS,
                "prompt_eval": float(response.prompt_eval_count or 0),
                "prompt_s": (response.prompt_eval_duration or 0) / NS,
                "eval": float(response.eval_count or 0),
            }
        )
        print(f"  keep_alive={keep_alive}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


def answer_problem(response: Any) -> str | None:
    """Why an answer is not a completed extraction call: no prompt or answer tokens, or not JSON though not cut."""
    if not response.prompt_eval_count or not response.eval_count:
        return f"{response.prompt_eval_count or 0} prompt and {response.eval_count or 0} answer tokens"
    try:
        json.loads(response.message.content or "")
    except ValueError:
        if response.done_reason != "length":
            return "the answer is not JSON"
    return None


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def report(mode: str, rows: list[dict[str, Any]], skip_first: bool) -> dict[str, Any]:
    problems = sorted({r["problem"] for r in rows if r["problem"]})
    status = mark({"mode": mode}, problems)
    if status["status"] == "failed":
        print(f"| {mode} | {failed_cell(status)} | | | | | | |")
        return status
    measured = rows[1:] if skip_first and len(rows) > 1 else rows
    walls = [r["wall_s"] for r in measured]
    print(
        f"| {mode} | {len(measured)} | {rows[0]['prompt_eval']:.0f} "
        f"| {statistics.mean(r['prompt_eval'] for r in measured):.0f} "
        f"| {statistics.mean(r['prompt_s'] for r in measured) * 1000:.0f} "
        f"| {statistics.mean(r['load_s'] for r in measured) * 1000:.0f} "
        f"| {statistics.median(walls):.2f} | {p95(walls):.2f} |"
    )
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("MEMBRANE_TEST_OLLAMA_HOST", "http://127.0.0.1:11435"))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--num-predict", type=int, default=128)
    args = parser.parse_args()

    client = ollama.Client(host=args.host, timeout=600)
    notes = texts(args.cases)
    version = httpx.get(f"{args.host}/api/version", timeout=10).json()["version"]
    print(
        f"Ollama {version} at {args.host}, model {args.model}, {len(notes)} gold texts, num_predict {args.num_predict}"
    )
    print(
        "| mode | calls | first call: prompt tokens | prompt tokens evaluated / call | prompt eval ms / call "
        "| load ms / call | p50 s | p95 s |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    cold = run(client, args, notes, 0)
    after_cold = residency(client, args.model)
    warm = run(client, args, notes, "10m")
    after_warm = residency(client, args.model)
    twice = [text for text in notes for _ in (0, 1)]
    repeat = run(client, args, twice, "10m")
    rows = [
        report("cold (keep_alive=0)", cold, skip_first=False),
        report("warm (keep_alive=10m), after the first call", warm, skip_first=True),
        report("warm, same note again (second of each pair)", repeat[1::2], skip_first=False),
    ]
    print(f"\n/api/ps after the cold mode: {after_cold}; after the warm mode: {after_warm}")
    raise SystemExit(exit_code(rows))


if __name__ == "__main__":
    main()
