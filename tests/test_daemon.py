"""The daemon in process with its real inbox watcher, worker threads, journal
and Neo4j: how files arrive, bad inputs end to end, SIGTERM-style shutdown."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from membrane.backends import BackendCheck, Generation, GenerationRequest, register_backend
from membrane.config import Settings
from membrane.daemon import Daemon, Notifier
from membrane.journal import Journal
from membrane.schema import ModelRef
from tests.support.pipeline import graph_snapshot, note, replay_for, settings_sections, wait_for


@pytest.fixture
def running(make_settings: Callable[..., Settings]) -> Iterator[Callable[[Settings], Daemon]]:
    """Starts a Daemon (no signal handlers) and always shuts it down."""
    started: list[Daemon] = []

    def start(settings: Settings) -> Daemon:
        daemon = Daemon(settings, notifier=Notifier(""), install_signals=False)
        daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.shutdown()


def _counts(settings: Settings) -> dict[str, int]:
    with Journal(settings.journal.path) as journal:
        return journal.status.counts()


@pytest.mark.neo4j
@pytest.mark.slow
def test_slow_atomic_and_bulk_arrivals_reach_the_graph_once(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    neo4j: Any,
    neo4j_settings: dict[str, Any],
    running: Callable[[Settings], Daemon],
) -> None:
    """Files written slowly in pieces, moved in atomically, and 100 copied at once all reach the graph exactly once."""
    total = 102
    settings = make_settings(
        **settings_sections(
            tmp_path, replay_for(total, tmp_path / "r.jsonl"), neo4j=neo4j_settings, inbox={"stable_seconds": 0.4}
        )
    )
    inbox = settings.inbox.path
    inbox.mkdir(parents=True)
    daemon = running(settings)
    # 1. written slowly, in pieces, with pauses shorter than the quiet period
    name, text, _ = note(0)
    with (inbox / name).open("w", encoding="utf-8") as handle:
        for piece in (text[:7], text[7:15], text[15:]):
            handle.write(piece)
            handle.flush()
            time.sleep(0.15)
    # 2. written elsewhere and renamed in (atomic move)
    name, text, _ = note(1)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / name).write_text(text, encoding="utf-8")
    os.rename(staging / name, inbox / name)
    # 3. one hundred copied at once
    for i in range(2, total):
        name, text, _ = note(i)
        (staging / name).write_text(text, encoding="utf-8")
    for i in range(2, total):
        os.rename(staging / note(i)[0], inbox / note(i)[0])
    wait_for(lambda: _counts(settings)["done"] == total, 90, f"{total} captures done")
    assert daemon.healthy()
    snapshot = graph_snapshot(neo4j)
    assert len(snapshot["captures"]) == total
    assert len(snapshot["facts"]) == total and all(len(f[3]) == 1 for f in snapshot["facts"])
    assert sorted(p.name for p in settings.inbox.processed.iterdir()) == sorted(note(i)[0] for i in range(total))
    with Journal(settings.journal.path) as journal:
        assert len(list(journal.extractions.recorded_outputs())) == total  # each extracted exactly once


def test_bad_inputs_end_to_end(
    make_settings: Callable[..., Settings], tmp_path: Path, running: Callable[[Settings], Daemon]
) -> None:
    """Binary, invalid UTF-8, empty, oversized, an escaping symlink and a FIFO reach failed/ with sidecars;
    a file deleted before it is read is forgotten; odd and non-Latin names are processed."""
    odd_names = ["line\nbreak.txt", "東京メモ.txt", "заметка.md", "ملاحظة.txt"]
    records = [
        (f"Note about {n!r}.", json.dumps({"entities": [{"name": "Tokyo", "role": "object"}], "relationships": []}))
        for n in odd_names
    ]
    settings = make_settings(
        **settings_sections(tmp_path, replay_for(0, tmp_path / "r.jsonl", extra=records), inbox={"max_bytes": 2000})
    )
    inbox = settings.inbox.path
    inbox.mkdir(parents=True)
    outside = tmp_path / "secret.txt"
    outside.write_text("outside the inbox", encoding="utf-8")
    bad = {
        "binary.txt": lambda p: p.write_bytes(b"\x00\x01\x02binary"),
        "invalid-utf8.txt": lambda p: p.write_bytes(b"caf\xe9"),
        "empty.txt": lambda p: p.write_bytes(b""),
        "oversized.txt": lambda p: p.write_text("x" * 3000, encoding="utf-8"),
        "escape.txt": lambda p: p.symlink_to(outside),
        "pipe.txt": lambda p: os.mkfifo(p),
    }
    running(settings)
    for name, make in bad.items():
        make(inbox / name)
    for name in odd_names:
        (inbox / name).write_text(f"Note about {name!r}.", encoding="utf-8")
    vanishing = inbox / "vanishing.txt"
    vanishing.write_text("here for a moment", encoding="utf-8")
    time.sleep(0.02)
    vanishing.unlink()  # deleted before the quiet period ended
    failed = settings.inbox.failed
    wait_for(lambda: all((failed / f"{n}.error.json").exists() for n in bad), 30, "sidecars of bad files")
    wait_for(lambda: _counts(settings)["done"] == len(odd_names), 30, "odd names done")
    for name in bad:
        sidecar = json.loads((failed / f"{name}.error.json").read_text(encoding="utf-8"))
        assert sidecar["stage"] == "read" and sidecar["reason"] and sidecar["hint"]
    assert sorted(p.name for p in settings.inbox.processed.iterdir()) == sorted(odd_names)
    assert outside.read_text(encoding="utf-8") == "outside the inbox"  # never read, never moved
    assert not vanishing.exists() and not (failed / "vanishing.txt").exists()


class _SlowBackend:
    """Answers from a replay file after `delay` seconds, like a slow model on a small CPU."""

    name = "slow"

    def __init__(self, settings: Settings, delay: float) -> None:
        from membrane.backends.replay import ReplayBackend

        self.inner = ReplayBackend.from_settings(settings)
        self.delay = delay
        self.started = threading.Event()

    def generate(self, request: GenerationRequest) -> Generation:
        self.started.set()
        time.sleep(self.delay)
        return self.inner.generate(request)

    def list_models(self) -> list[str]:
        return ["recorded"]

    def check(self, model: str) -> BackendCheck:
        return BackendCheck(True, "slow")

    def parameters(self, model: str) -> str:
        return ""


def test_stop_finishes_the_capture_in_hand_and_leaves_the_rest_queued(
    make_settings: Callable[..., Settings], tmp_path: Path, running: Callable[[Settings], Daemon]
) -> None:
    """On stop the worker completes its current capture; the others stay queued for the next start."""
    backends: list[_SlowBackend] = []
    register_backend("slow", lambda s: backends.append(_SlowBackend(s, 0.8)) or backends[-1])
    settings = make_settings(**settings_sections(tmp_path, replay_for(4, tmp_path / "r.jsonl")))
    with Journal(settings.journal.path) as journal:
        journal.models.set_active_model(ModelRef("slow", "recorded"), reason="test", evidence={})
    settings.inbox.path.mkdir(parents=True)
    for i in range(4):
        name, text, _ = note(i)
        (settings.inbox.path / name).write_text(text, encoding="utf-8")
    daemon = running(settings)
    wait_for(lambda: bool(backends) and backends[0].started.is_set(), 30, "the first model call")
    daemon.shutdown()
    counts = _counts(settings)
    assert counts["done"] == 1 and counts["queued"] == 3 and counts["extracting"] == 0
    assert len(list(settings.inbox.path.glob("note-*.txt"))) == 3


@pytest.mark.neo4j
def test_deleting_a_processed_file_retracts_its_facts(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    neo4j: Any,
    neo4j_settings: dict[str, Any],
    running: Callable[[Settings], Daemon],
) -> None:
    """A file deleted from processed/ retracts the facts only its capture supported; a duplicate copy keeps them."""
    settings = make_settings(**settings_sections(tmp_path, replay_for(3, tmp_path / "r.jsonl"), neo4j=neo4j_settings))
    inbox = settings.inbox.path
    inbox.mkdir(parents=True)
    running(settings)
    for i in range(3):
        (inbox / note(i)[0]).write_text(note(i)[1], encoding="utf-8")
    (inbox / "copy-of-2.txt").write_text(note(2)[1], encoding="utf-8")
    wait_for(lambda: _counts(settings)["done"] == 3 and not list(inbox.glob("*.txt")), 30, "captures done")
    processed = settings.inbox.processed
    (processed / note(0)[0]).unlink()
    (processed / note(2)[0]).unlink()  # its bytes live on in processed/copy-of-2.txt
    wait_for(lambda: _counts(settings)["retracted"] == 1, 30, "the deleted capture retracted")
    # The journal is marked first, then the graph: wait for the graph to follow.
    wait_for(lambda: len(graph_snapshot(neo4j)["captures"]) == 2, 30, "the graph retraction")
    snapshot = graph_snapshot(neo4j)
    assert sorted(path for _, path, _ in snapshot["captures"]) == [note(1)[0], note(2)[0]]
    assert len(snapshot["facts"]) == 2


def test_bench_scheduler_runs_with_the_daemon_when_configured(
    make_settings: Callable[..., Settings], tmp_path: Path, running: Callable[[Settings], Daemon]
) -> None:
    """With bench.interval_hours set the daemon starts the bench scheduler, idle only when nothing is pending."""
    from membrane.bench import BenchScheduler

    settings = make_settings(
        **settings_sections(tmp_path, replay_for(1, tmp_path / "r.jsonl"), bench={"interval_hours": 24.0})
    )
    daemon = running(settings)
    assert isinstance(daemon.scheduler, BenchScheduler)
    assert daemon.scheduler.is_idle() is True
    plain = make_settings(**settings_sections(tmp_path / "plain", replay_for(1, tmp_path / "p.jsonl")))
    assert running(plain).scheduler is None
