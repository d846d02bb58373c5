"""Faults of the model: answers that hang past the timeout, garbage, thinking text, unclosed
reasoning and fences, through the real `ollama` client over HTTP (FakeOllama) into a daemon.

Each capture gets one behaviour by its number (i % 10): 0, 1, 8, 9 clean; 2, 3
reasoning inlined as <think>...</think> before the answer; 4 garbage first,
valid on repair; 5 garbage every time (must fail, with a reason); 6 a hang
past model.timeout_s on the first call, valid on the retry; 7 reasoning that
never closes (the budget ran out), then a fenced answer. The clean run is the
same model with its faults switched off, over the captures that can succeed.
Prints the figures of benchmarks/faults_support.py. The crash of the model
runtime's child process is benchmarks/faults_child.py (the real embedded model).

    eval "$(scripts/neo4j-local env)"
    .venv/bin/python benchmarks/faults_model.py [--captures 200] [--hang-s 3] [--timeout-s 1.5]
"""

from __future__ import annotations

import argparse
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faults_support import (
    Daemon,
    Workspace,
    clean_snapshot,
    neo4j_from_env,
    outcome_counts,
    report,
    until_inbox_empty,
)

from membrane.logs import configure_logging
from membrane.testing.ollama_server import FakeOllama, ScriptedModel
from tests.support.pipeline import note, wipe

MODEL = "faulty:1b"
_NOTE = re.compile(r"Note (\d+): ")
GARBAGE = [
    "Sure! Here are the entities you asked for.",
    '{"entities": "Alice", "relationships": 7}',
    "[1, 2, 3]",
    '{"entities": [{"name": ""}], "relationships": []',
]


@dataclass
class FaultyModel(ScriptedModel):
    """Answers each note with its recorded extraction, wrapped in the fault its number picks."""

    hang_s: float = 3.0
    faults: bool = True
    seen: dict[int, int] = field(default_factory=dict)
    behaviours: dict[str, int] = field(default_factory=dict)

    def answer(self, body: dict[str, Any]) -> tuple[str, str | None, str]:
        i = self._note_number(body)
        if i is None:
            return "{}", None, "stop"
        with self._lock:
            attempt = self.seen.get(i, 0)
            self.seen[i] = attempt + 1
        valid = note(i)[2]
        if not self.faults:
            return valid, None, "stop"
        kind, content = self._fault(i, attempt, valid)
        with self._lock:
            self.behaviours[kind] = self.behaviours.get(kind, 0) + 1
        if kind == "hang":
            time.sleep(self.hang_s)
        return content, None, "length" if kind == "unclosed_think" else "stop"

    def _fault(self, i: int, attempt: int, valid: str) -> tuple[str, str]:
        mode = i % 10
        if mode in (2, 3):
            return "think", f"<think>The note names a person and a place; number {i}.</think>\n{valid}"
        if mode == 4 and attempt == 0:
            return "garbage_then_valid", GARBAGE[i % len(GARBAGE)]
        if mode == 5:
            return "garbage_always", GARBAGE[(i + attempt) % len(GARBAGE)]
        if mode == 6 and attempt == 0:
            return "hang", valid
        if mode == 7:
            if attempt == 0:
                return "unclosed_think", "<think>Let me consider every word of this note carefully. " * 20
            return "fenced", f"```json\n{valid}\n```"
        return "clean", valid

    @staticmethod
    def _note_number(body: dict[str, Any]) -> int | None:
        for message in reversed(body.get("messages", [])):
            match = _NOTE.match(message.get("content", "")) if message.get("role") == "user" else None
            if match:
                return int(match.group(1))
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", type=int, default=200)
    parser.add_argument("--hang-s", type=float, default=3.0, help="how long a hanging answer takes")
    parser.add_argument("--timeout-s", type=float, default=1.5, help="model.timeout_s of the daemon")
    parser.add_argument("--wait-s", type=float, default=1800)
    args = parser.parse_args()
    configure_logging("warning", "console")
    neo4j = neo4j_from_env()
    from neo4j import GraphDatabase

    model = FaultyModel(outputs=["{}"], hang_s=args.hang_s)
    with (
        tempfile.TemporaryDirectory(prefix="membrane-faults-model-") as tmp,
        FakeOllama() as server,
        GraphDatabase.driver(neo4j["uri"], auth=(neo4j["user"], neo4j["password"])) as driver,
    ):
        server.models[MODEL] = model
        root = Path(tmp)
        model_section = {"backend": "ollama", "name": MODEL, "ollama_host": server.url, "timeout_s": args.timeout_s}
        workspace = Workspace.create(root / "run", None, neo4j, model=model_section, daemon={"concurrency": 2})
        files = {note(i)[0]: note(i)[1] for i in range(args.captures)}
        succeeding = {name: text for i, (name, text) in enumerate(files.items()) if i % 10 != 5}
        model.faults = False
        expected = clean_snapshot(root / "clean", workspace.sections, succeeding, driver)
        model.faults, model.seen = True, {}
        wipe(driver)
        for name, text in files.items():
            workspace.stage(name, text)
        daemon = Daemon(workspace)
        started = time.monotonic()
        with daemon.running():
            for name in sorted(files):
                workspace.drop(name)
            until_inbox_empty(workspace, daemon, args.wait_s)
        wall = time.monotonic() - started
        counts = outcome_counts(workspace, list(files))
        must_fail = sum(1 for i in range(args.captures) if i % 10 == 5)
        figures = report(
            "faults_model",
            {"captures": args.captures, "hang_s": args.hang_s, "timeout_s": args.timeout_s},
            workspace,
            counts,
            driver,
            expected,
            wall,
            daemon,
            expected_failures=must_fail,
            behaviours=dict(model.behaviours),
            model_calls=sum(model.seen.values()),
            threads=threading.active_count(),
        )
        ok = figures["ok"] and counts["failed_with_reason"] == must_fail
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
