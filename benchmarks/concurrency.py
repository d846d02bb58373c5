"""Concurrent extraction: notes per minute against a model server with N calls in flight.

Two servers, each started and stopped here, on 127.0.0.1:
- llama.cpp's llama-server (`scripts/llama-server build`) with --parallel 1, 2, 4
  slots (--ctx-size = slots x model.num_ctx, so each slot holds one request),
  through the openai backend;
- Ollama (`scripts/ollama-local`, its own rig folder and port) with
  OLLAMA_NUM_PARALLEL 1, 2, 4, through the ollama backend.
For every server setting and every in-flight count N (daemon.concurrency = N
worker threads, each with one model call in flight), --notes notes go through
`membrane ingest`'s code path (journal-only: the model is what is measured):
read, journal, extract with the project's defaults (schema-constrained, repair,
grounding), store. The notes are labelled cases' texts from config/train/
(never an evaluation set), a seeded sample, each a distinct capture.

Each server setting first runs an untimed warm-up (--warmup notes: the model's
load and first decode). A row is failed, with the reason, unless every note is
done and the model generated tokens; for llama-server the row also reports the
most slots seen busy at once (GET /slots, polled), which shows that N calls were
really in flight. The script exits 1 when a row failed.

    .venv/bin/python benchmarks/concurrency.py [--notes 200] [--servers llama-server,ollama]
        [--parallel 1,2,4] [--in-flight 1,2,4,8] [--model smollm2-135m] [--out FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from checks import count_problems, exit_code, failed, failed_cell, mark, minimum_problems  # noqa: E402

from membrane.backends.gguf import locate_gguf  # noqa: E402
from membrane.config import Settings  # noqa: E402
from membrane.daemon import ingest  # noqa: E402
from membrane.files import read_jsonl  # noqa: E402
from membrane.journal import Journal  # noqa: E402
from membrane.logs import configure_logging  # noqa: E402
from tests.support.openai_servers import BusyWatch, LlamaServer, free_port, llama_server_binary  # noqa: E402


def sample_notes(count: int, seed: int = 0) -> list[str]:
    """`count` distinct texts of labelled training cases, a seeded sample."""
    texts = sorted(
        {
            str(record["text"])
            for path in sorted((ROOT / "config" / "train").glob("cases-*.jsonl"))
            for _, record in read_jsonl(path)
        }
    )
    if count > len(texts):
        raise SystemExit(f"--notes {count}: only {len(texts)} distinct training texts")
    return random.Random(seed).sample(texts, count)


# ---------------------------------------------------------------- servers


@contextmanager
def llama_server(model: str, slots: int, num_ctx: int, work: Path) -> Iterator[tuple[dict[str, Any], LlamaServer]]:
    """llama-server with `slots` parallel slots of num_ctx tokens; yields the [model] settings for it, and it."""
    binary = llama_server_binary()
    if binary is None:
        raise RuntimeError("no llama-server: run scripts/llama-server build")
    embedded = Settings().model.embedded[model]
    server = LlamaServer(
        binary,
        locate_gguf(embedded.path),
        model,
        work / f"llama-server-{slots}.log",
        chat_template=embedded.chat_format,
        slots=slots,
        slot_ctx=num_ctx,
    ).start()
    try:
        yield {"backend": "openai", "name": model, "openai_base_url": server.base_url}, server
    finally:
        server.stop()


@contextmanager
def ollama_server(model: str, parallel: int, work: Path) -> Iterator[tuple[dict[str, Any], None]]:
    """Ollama with OLLAMA_NUM_PARALLEL = parallel, in its own rig folder; yields the [model] settings for it."""
    port = free_port()
    env = {
        **os.environ,
        "OLLAMA_RIG_DIR": str(work / "ollama"),
        "OLLAMA_PORT": str(port),
        "OLLAMA_NUM_PARALLEL": str(parallel),
        "OLLAMA_LOCAL_MODELS": model,
        "PYTHON": sys.executable,
    }
    script = str(ROOT / "scripts" / "ollama-local")
    subprocess.run([script, "start"], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        yield {"backend": "ollama", "name": model, "ollama_host": f"http://127.0.0.1:{port}"}, None
    finally:
        subprocess.run([script, "stop"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---------------------------------------------------------------- one run


def run(
    model_settings: dict[str, Any], server: LlamaServer | None, notes: list[str], in_flight: int, work: Path
) -> dict[str, Any]:
    """Ingest `notes` with daemon.concurrency = in_flight; the row of figures and its checks."""
    root = Path(tempfile.mkdtemp(prefix=f"run-{in_flight}-", dir=work))
    settings = Settings.model_validate(
        {
            "inbox": {"path": str(root / "inbox")},
            "journal": {"path": str(root / "journal.sqlite3")},
            "model": {**model_settings, "timeout_s": 600.0},
            "daemon": {"concurrency": in_flight},
        }
    )
    settings.inbox.path.mkdir(parents=True)
    for index, text in enumerate(notes):
        (settings.inbox.path / f"note-{index:04d}.txt").write_text(text + "\n", encoding="utf-8")
    watch = BusyWatch(server) if server is not None else nullcontext()
    with Journal(settings.journal.path) as journal:
        with watch:
            started = time.perf_counter()
            report = ingest(settings, [settings.inbox.path], journal=journal)
            wall = time.perf_counter() - started
        results = [stored.result for _, stored in journal.extractions.facts()]
        done = journal.status.counts()["done"]
    tokens = sum(result.completion_tokens for result in results)
    row: dict[str, Any] = {
        "in_flight": in_flight,
        "notes": len(notes),
        "wall_s": round(wall, 1),
        "notes_per_min": round(len(notes) / wall * 60, 2),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
        "calls": sum(result.calls for result in results),
        "failed_notes": len(report.failed),
    }
    problems = count_problems({"done": len(notes)}, {"done": done})
    problems += minimum_problems({"completion_tokens": 1}, {"completion_tokens": tokens})
    if isinstance(watch, BusyWatch) and server is not None:
        row["most_slots_busy"] = watch.most
        # N workers must have kept min(N, slots) requests in the server at once at some point.
        problems += minimum_problems({"most_slots_busy": min(in_flight, server.slots, len(notes))}, row)
    return mark(row, problems)


def bench_server(
    server: str, parallel: int, args: argparse.Namespace, notes: list[str], warmup: list[str], work: Path
) -> list[dict[str, Any]]:
    label = {"server": server, "parallel": parallel, "model": args.model}
    try:
        context = (
            llama_server(args.model, parallel, Settings().model.num_ctx, work)
            if server == "llama-server"
            else ollama_server(args.model, parallel, work)
        )
        rows = []
        with context as (model_settings, running):
            warm = run(model_settings, running, warmup, max(args.in_flight), work)  # untimed
            for in_flight in args.in_flight:
                row = {**label, **run(model_settings, running, notes, in_flight, work)}
                if failed(warm):
                    mark(row, [f"warm-up: {warm.get('reason')}"])
                rows.append(row)
                print(_line(row), flush=True)
        return rows
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        row = mark({**label, "in_flight": "-"}, [f"{type(exc).__name__}: {exc}"])
        print(_line(row), flush=True)
        return [row]


def _line(row: dict[str, Any]) -> str:
    head = f"{row['server']:<12} parallel {row['parallel']}  in flight {row['in_flight']!s:>2}  "
    if failed(row):
        return head + failed_cell(row)
    busy = f"  slots busy <= {row['most_slots_busy']}" if "most_slots_busy" in row else ""
    return head + (
        f"{row['notes']} notes in {row['wall_s']:>7.1f} s  {row['notes_per_min']:>7.2f} notes/min  "
        f"{row['tokens_per_s']:>6.1f} tokens/s{busy}"
    )


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notes", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=2, help="notes of the untimed warm-up per server setting")
    parser.add_argument("--servers", default="llama-server,ollama")
    parser.add_argument("--parallel", type=_ints, default=[1, 2, 4], help="llama-server slots / OLLAMA_NUM_PARALLEL")
    parser.add_argument("--in-flight", type=_ints, default=[1, 2, 4, 8], help="daemon.concurrency values")
    parser.add_argument("--model", default="smollm2-135m", choices=["smollm2-135m", "gemma3-270m"])
    parser.add_argument("--out", type=Path, help="also write the rows as JSON lines here")
    parser.add_argument(
        "--work-dir", type=Path, help="where inboxes, journals and server logs go (default: a temp dir)"
    )
    args = parser.parse_args()
    configure_logging("warning", "console")
    texts = sample_notes(args.notes + args.warmup)
    notes, warmup = texts[: args.notes], texts[args.notes :]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="membrane-concurrency-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# {args.notes} notes, model {args.model}, in flight {args.in_flight}, work dir {work}", flush=True)
    rows = [
        row
        for server in args.servers.split(",")
        for parallel in args.parallel
        for row in bench_server(server.strip(), parallel, args, notes, warmup, work)
    ]
    if args.out:
        args.out.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    raise SystemExit(exit_code(rows))


if __name__ == "__main__":
    main()
