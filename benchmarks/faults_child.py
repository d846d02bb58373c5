"""The model runtime's child crashing at volume: the real embedded SmolLM2 in `membrane run`,
whose llama.cpp child dies on every prompt of the captures that hold the trigger text: a
real SIGSEGV in native code by default (MEMBRANE_EMBEDDED_FAULT=segv:TEXT), or with
`--fault` abort(3) (SIGABRT, a failed GGML_ASSERT), SIGILL (a build for another CPU) or
SIGKILL (the OOM killer).

One capture in every `--every` (the middle one of each block) holds the
trigger: each of those crashes the child daemon.max_model_crashes times and
must end in failed/ with the signal (SIGSEGV, SIGABRT, SIGILL or SIGKILL) named in its reason. The clean run is an
in-process `membrane ingest` of the captures without the trigger, on the same
model with no fault; the daemon must fail exactly the trigger captures and
those the model itself failed in the clean run (an answer cut off at
num_predict), and do every other one, with a child started afresh after each
crash. Prints the figures of benchmarks/faults_support.py, plus the crashes
the daemon logged, the distinct child processes seen (sampled every 20 ms, a
lower bound of the children started) and whether the daemon process ever died.

    eval "$(scripts/neo4j-local env)"
    .venv/bin/python benchmarks/faults_child.py [--captures 60] [--every 10] [--num-predict 96] [--fault segv]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
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

from membrane.backends.embedded import close_models
from membrane.backends.embedded_child import FAULT_ENV, FAULTS
from membrane.inbox import SIDECAR_SUFFIX
from membrane.logs import configure_logging
from tests.support.pipeline import note, wipe

TRIGGER = "KABOOM"
CHILD_MODULE = b"membrane.backends.embedded_child"
SIGNALS = {"segv": "SIGSEGV", "abort": "SIGABRT", "ill": "SIGILL", "kill": "SIGKILL"}  # what each fault dies of


def captures(count: int, every: int) -> tuple[dict[str, str], set[str]]:
    """The stream's files by name, and the names of those holding the trigger."""
    files, crashing = {}, set()
    for i in range(count):
        name, text, _ = note(i)
        if every and i % every == every // 2:  # mid-block, so captures after the last crash show a fresh child
            text = f"{TRIGGER} {text}"
            crashing.add(name)
        files[name] = text
    return files, crashing


class ChildWatch(threading.Thread):
    """Samples the daemon's child processes and remembers every embedded child's pid."""

    def __init__(self, daemon: Daemon, interval_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.target, self.interval_s = daemon, interval_s
        self.pids: set[int] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            process = self.target.process
            if process is not None:
                self.pids.update(_embedded_children(process.pid))


def _embedded_children(pid: int) -> set[int]:
    found = set()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        children = {int(c) for task in tasks for c in (task / "children").read_text().split()}
    except OSError:
        return found
    for child in children:
        try:
            if CHILD_MODULE in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except OSError:
            pass  # it already died: seen by the next sample or never (a lower bound)
    return found


def logged_crashes(log: Path) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        if '"model_crashed"' in line and line.startswith("{"):
            events.append(json.loads(line))
    return events


def _reason(workspace: Workspace, name: str) -> str:
    """The whole reason in a failed capture's sidecar ("" if it is not in failed/)."""
    sidecar = workspace.settings.inbox.failed / f"{name}{SIDECAR_SUFFIX}"
    try:
        return str(json.loads(sidecar.read_text(encoding="utf-8")).get("reason") or "")
    except (OSError, ValueError):
        return ""


def _failed_names(folder: Path) -> set[str]:
    """Captures in a failed/ folder (their sidecars left out)."""
    if not folder.exists():
        return set()
    return {p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith(SIDECAR_SUFFIX)}


def sections(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {
        "model": {"backend": "embedded", "name": "smollm2-135m", "num_predict": args.num_predict},
        "extraction": {"few_shot": False, "max_entities": 4, "max_relationships": 2, "max_repairs": 0},
        "daemon": {
            "concurrency": 1,
            "retry_base_s": args.retry_base_s,
            "retry_max_s": 4 * args.retry_base_s,
            "max_model_crashes": args.max_crashes,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captures", type=int, default=60)
    parser.add_argument("--every", type=int, default=10, help="every N-th capture holds the crash trigger")
    parser.add_argument("--num-predict", type=int, default=96, help="model.num_predict (tokens per answer)")
    parser.add_argument("--retry-base-s", type=float, default=0.05, help="daemon.retry_base_s")
    parser.add_argument("--max-crashes", type=int, default=3, help="daemon.max_model_crashes")
    parser.add_argument("--wait-s", type=float, default=1800)
    parser.add_argument("--fault", choices=sorted(FAULTS), default="segv", help="how the child dies")
    args = parser.parse_args()
    configure_logging("warning", "console")
    neo4j = neo4j_from_env()
    from neo4j import GraphDatabase

    files, crashing = captures(args.captures, args.every)
    with (
        tempfile.TemporaryDirectory(prefix="membrane-faults-child-") as tmp,
        GraphDatabase.driver(neo4j["uri"], auth=(neo4j["user"], neo4j["password"])) as driver,
    ):
        root = Path(tmp)
        workspace = Workspace.create(root / "run", None, neo4j, **sections(args))
        succeeding = {name: text for name, text in files.items() if name not in crashing}
        expected = clean_snapshot(root / "clean", workspace.sections, succeeding, driver)
        clean_failed = _failed_names(root / "clean" / "inbox" / "failed")
        close_models()  # the clean run's child; the daemon starts its own
        wipe(driver)
        for name, text in files.items():
            workspace.stage(name, text)
        daemon = Daemon(workspace, extra_env={FAULT_ENV: f"{args.fault}:{TRIGGER}"})
        watch = ChildWatch(daemon)
        started = time.monotonic()
        with daemon.running():
            watch.start()
            for name in sorted(files):
                workspace.drop(name)
            until_inbox_empty(workspace, daemon, args.wait_s)
        watch.done.set()
        wall = time.monotonic() - started
        counts = outcome_counts(workspace, list(files))
        crashes = logged_crashes(daemon.log)
        signal_name = SIGNALS[args.fault]
        named = sum(1 for name in crashing if signal_name in _reason(workspace, name))
        figures = report(
            "faults_child",
            {
                "captures": args.captures,
                "every": args.every,
                "num_predict": args.num_predict,
                "fault": args.fault,
                "retry_base_s": args.retry_base_s,
                "max_model_crashes": args.max_crashes,
            },
            workspace,
            counts,
            driver,
            expected,
            wall,
            daemon,
            expected_failures=len(crashing) + len(clean_failed),
            failed_naming_the_signal=named,
            failed_in_clean_run_too=len(clean_failed),
            crashes_logged=len(crashes),
            crash_signals=sorted({str(e.get("signal")) for e in crashes}),
            children_seen=len(watch.pids),
            daemon_never_died=daemon.starts == 1 and daemon.exit_codes == [0],
            sample_reason=next((_reason(workspace, n) for n in sorted(crashing)), ""),
        )
        failed = _failed_names(workspace.settings.inbox.failed)
        ok = (
            figures["ok"]
            and named == len(crashing)
            and failed == crashing | clean_failed
            and counts["done"] == len(files) - len(failed)
            and figures["daemon_never_died"]
            and len(crashes) == len(crashing) * args.max_crashes
        )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
