"""Fuzzing at volume: capture files, front matter, JSON captures, file names,
documents (PDF, web pages, Word, e-mail) and model answers.

Runs the strategies of tests/support/fuzz.py for --examples inputs per
target (7 targets: 14,000 inputs by default) with random seeds, and prints,
per target and in total, the count of each outcome (parsed, rejected with a
code, or a finding: uncaught:<Exception>, unusable:<why>, unexplained) and the
slowest input's time. A watchdog (faulthandler) ends the process with a
traceback if one input runs past --hang-s: a hang cannot pass silently.
Documents are converted in this process (the converter child's own work,
without its time and memory limits), so a converter that hangs or crashes
on an input is a finding here rather than a refusal; `--child` reads them
as the daemon does instead, through the child (slower: one process each).
Exit status 1 when any input broke the contract.

    .venv/bin/python benchmarks/fuzz_inputs.py [--examples 2000] [--seed 1] [--hang-s 30]
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from checks import exit_code, mark, minimum_problems  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from membrane.config import InboxSettings  # noqa: E402
from membrane.logs import configure_logging  # noqa: E402
from membrane.schema import ExtractionRules  # noqa: E402
from tests.support.fuzz import (  # noqa: E402
    Result,
    answer_objects,
    capture_files,
    classify_answer,
    classify_capture,
    classify_document,
    document_files,
    file_names,
    front_matters,
    json_captures,
    model_answers,
    write_capture,
)


class Tally:
    """Outcome counts and the slowest input of one target."""

    def __init__(self, hang_s: float) -> None:
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.findings: list[str] = []
        self.slowest = (0.0, "")
        self.hang_s = hang_s

    def add(self, result: Result, shown: Any) -> None:
        key = (
            result.outcome
            if not result.ok
            else f"{result.outcome}:{result.detail}"
            if result.detail
            else result.outcome
        )
        self.outcomes[key] += 1
        if not result.ok and len(self.findings) < 20:
            self.findings.append(f"{result.outcome} {result.detail[:120]} for {repr(shown)[:200]}")
        if result.seconds > self.slowest[0]:
            self.slowest = (result.seconds, repr(shown)[:80])
        faulthandler.dump_traceback_later(self.hang_s, exit=True)  # re-armed for the next input

    def summary(self, name: str, seconds: float) -> dict[str, Any]:
        """The target's figures, "failed" when an input broke the contract or no input ran at all."""
        broke = sum(n for k, n in self.outcomes.items() if not k.startswith(("parsed", "rejected")))
        inputs = sum(self.outcomes.values())
        problems = minimum_problems({"inputs": 1}, {"inputs": inputs})
        problems += [f"{broke} inputs broke the contract"] if broke else []
        return mark(
            {
                "target": name,
                "inputs": sum(self.outcomes.values()),
                "parsed": sum(n for k, n in self.outcomes.items() if k.startswith("parsed")),
                "rejected": sum(n for k, n in self.outcomes.items() if k.startswith("rejected")),
                "broke_contract": broke,
                "slowest_s": round(self.slowest[0], 4),
                "slowest_input": self.slowest[1],
                "seconds": round(seconds, 1),
                "outcomes": dict(self.outcomes.most_common()),
                "findings": self.findings,
            },
            problems,
        )


def _run(
    strategy: st.SearchStrategy[Any], check: Callable[[Any], Result], examples: int, run_seed: int, tally: Tally
) -> None:
    @seed(run_seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    @given(strategy)
    def body(value: Any) -> None:
        tally.add(check(value), value)

    body()


def targets(folder: Path, child: bool = False) -> dict[str, tuple[st.SearchStrategy[Any], Callable[[Any], Result]]]:
    inbox = InboxSettings(path=folder, max_bytes=1_000_000)
    rules = ExtractionRules()

    def capture(case: tuple[str, bytes]) -> Result:
        return classify_capture(write_capture(folder, b"capture" + case[0].encode(), case[1]), inbox)

    def named(name: bytes) -> Result:
        path = write_capture(folder, name, b"Alice works at Acme.\n")
        try:
            return classify_capture(path, inbox)
        finally:
            path.unlink()

    return {
        "capture_files": (capture_files(), capture),
        "front_matter": (front_matters(), lambda c: capture((".md", c))),
        "json_captures": (json_captures(), lambda c: capture((".json", c))),
        "file_names": (file_names(), named),
        "documents": (document_files(), capture if child else lambda case: classify_document(*case)),
        "model_answers": (model_answers(), lambda raw: classify_answer(raw, rules)),
        "answer_objects": (answer_objects(), lambda v: classify_answer(json.dumps(v, allow_nan=True), rules)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2000, help="inputs per target (7 targets)")
    parser.add_argument("--child", action="store_true", help="convert documents in the child process")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hang-s", type=float, default=30.0, help="one input running longer is a hang")
    parser.add_argument("--only", help="comma-separated targets")
    args = parser.parse_args()
    configure_logging("error", "console")
    started, summaries = time.monotonic(), []
    with tempfile.TemporaryDirectory(prefix="membrane-fuzz-") as tmp:
        chosen = targets(Path(tmp), args.child)
        if args.only:
            chosen = {k: v for k, v in chosen.items() if k in args.only.split(",")}
        for n, (name, (strategy, check)) in enumerate(chosen.items()):
            tally, target_started = Tally(args.hang_s), time.monotonic()
            faulthandler.dump_traceback_later(args.hang_s, exit=True)
            _run(strategy, check, args.examples, args.seed + n, tally)
            faulthandler.cancel_dump_traceback_later()
            summary = tally.summary(name, time.monotonic() - target_started)
            summaries.append(summary)
            print(json.dumps(summary, ensure_ascii=True), flush=True)
    total = {
        "target": "total",
        "inputs": sum(s["inputs"] for s in summaries),
        "parsed": sum(s["parsed"] for s in summaries),
        "rejected": sum(s["rejected"] for s in summaries),
        "broke_contract": sum(s["broke_contract"] for s in summaries),
        "slowest_s": max((s["slowest_s"] for s in summaries), default=0.0),
        "seconds": round(time.monotonic() - started, 1),
    }
    mark(total, [f"{s['target']}: {s['reason']}" for s in summaries if s["status"] == "failed"])
    print(json.dumps(total))
    raise SystemExit(exit_code([total, *summaries]))


if __name__ == "__main__":
    main()
