"""The journal: capture state machine, claims, crash recovery, status, models."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from membrane.clock import backoff_delay
from membrane.errors import MembraneError
from membrane.journal import (
    CAPTURE_STATES,
    FACT_STATES,
    PENDING_STATES,
    TRANSITIONS,
    CaptureState,
    Journal,
    JournalError,
    StaleClaim,
)
from membrane.schema import ModelRef
from tests.support.extraction import make_result


class Clock:
    """A settable clock, so due times and leases are tested without sleeping."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def journal(tmp_path: Path, clock: Clock) -> Iterator[Journal]:
    with Journal(tmp_path / "journal.sqlite3", clock=clock) as j:
        yield j


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def add(journal: Journal, text: str, path: str | None = None) -> str:
    digest = sha(text)
    journal.captures.enqueue(digest, path or f"/inbox/{digest[:8]}.txt", text, {"source": "test"})
    return digest


def extract(
    journal: Journal, digest: str, *, raw: str = '{"entities": []}', chunks: list[list[int]] | None = None
) -> int:
    claimed = journal.claims.claim("t")
    assert claimed is not None and claimed.sha256 == digest
    return journal.extractions.record(
        digest,
        make_result(
            {"entities": [{"name": "Ada", "role": "subject"}], "relationships": []},
            model="smollm2-135m",
            backend="embedded",
            prompt_version="p1",
            raw_outputs=[raw],
            prompt_tokens=10,
            completion_tokens=5,
            seconds=0.5,
            chunks=chunks or [],
        ),
    )


def test_capture_walks_the_state_machine_to_done(journal: Journal) -> None:
    """A capture goes queued -> extracting -> extracted -> projected -> done, counted at each step."""
    digest = add(journal, "Ada wrote the first program.")
    assert journal.status.counts()["queued"] == 1
    extraction_id = extract(journal, digest)
    stored = journal.extractions.latest(digest)
    assert stored is not None and stored.id == extraction_id
    assert stored.result.raw_outputs == ('{"entities": []}',) and stored.result.completion_tokens == 5
    assert stored.result.extraction.entities[0].name == "Ada"
    journal.captures.mark_projected(digest)
    journal.captures.mark_done(digest)
    counts = journal.status.counts()
    assert counts["done"] == 1 and sum(counts.values()) == 1
    assert set(counts) == set(CAPTURE_STATES)


def test_same_bytes_again_adds_a_path_and_keeps_done(journal: Journal) -> None:
    """Enqueuing bytes that are already done records the new path and does not queue them again."""
    digest = add(journal, "same text", "/inbox/a.txt")
    extract(journal, digest)
    journal.captures.mark_done(digest)
    again = journal.captures.enqueue(digest, "/inbox/b.txt", "same text")
    assert not again.created and again.record.state == "done"
    assert journal.captures.paths(digest) == ["/inbox/a.txt", "/inbox/b.txt"]
    assert journal.claims.claim("t") is None


def test_transition_from_the_wrong_state_is_refused(journal: Journal) -> None:
    """Marking a queued capture projected raises StaleClaim and leaves it queued."""
    digest = add(journal, "not extracted yet")
    with pytest.raises(StaleClaim, match="is queued, expected extracted"):
        journal.captures.mark_projected(digest)
    with pytest.raises(StaleClaim, match="not in the journal"):
        journal.captures.mark_done("0" * 64)
    record = journal.captures.get(digest)
    assert record is not None and record.state == "queued"


def test_the_transition_table_covers_every_state() -> None:
    """Every state has a row, every move leads to a state, and the stored values are the journal's strings."""
    assert set(TRANSITIONS) == set(CaptureState) == set(CAPTURE_STATES)
    assert all(targets <= set(CaptureState) for targets in TRANSITIONS.values())
    assert {state.value for state in CaptureState} == {
        "queued",
        "extracting",
        "extracted",
        "projected",
        "done",
        "failed",
        "retracted",
    }
    assert set(FACT_STATES) <= set(CaptureState) and set(PENDING_STATES) <= set(CaptureState)


def test_a_move_the_table_does_not_hold_is_refused(journal: Journal) -> None:
    """Failing a done capture, or marking a retracted one done, raises StaleClaim naming both states."""
    digest = add(journal, "settled")
    extract(journal, digest)
    journal.captures.mark_done(digest)
    with pytest.raises(StaleClaim, match="cannot move done -> failed"):
        journal.captures.fail(digest, stage="extract", reason="too late")
    journal.captures.mark_retracted(digest, graph=False)
    with pytest.raises(StaleClaim, match="cannot move retracted -> done"):
        journal.captures.mark_done(digest)
    record = journal.captures.get(digest)
    assert record is not None and record.state == CaptureState.RETRACTED and record.last_error is None


def test_journal_is_composed_of_its_stores(journal: Journal) -> None:
    """The journal's public surface is its stores, not their methods."""
    public = {name for name in vars(journal) if not name.startswith("_")}
    assert public == {"captures", "claims", "extractions", "models", "status", "search", "migrations_applied"}
    assert not hasattr(journal, "enqueue") and not hasattr(journal, "claim")


def test_retryable_error_keeps_the_capture_and_delays_it(journal: Journal, clock: Clock) -> None:
    """release() counts the attempt, keeps the error and hides the capture until it is due."""
    digest = add(journal, "model was down")
    assert journal.claims.claim("t") is not None
    record = journal.claims.release(digest, error="model unreachable", delay_s=backoff_delay(1, 5, 900))
    assert record.state == "queued" and record.attempts == 1 and record.last_error == "model unreachable"
    assert record.next_attempt_at is not None
    assert journal.claims.claim("t") is None
    clock.now += 5.1
    again = journal.claims.claim("t")
    assert again is not None and again.sha256 == digest and again.attempts == 1


def test_backoff_doubles_and_is_capped() -> None:
    """backoff_delay doubles per attempt from the base and never exceeds the cap."""
    assert [backoff_delay(n, 5, 60) for n in (1, 2, 3, 4, 5, 100)] == [5, 10, 20, 40, 60, 60]


def test_projection_retry_keeps_extracted_state(journal: Journal, clock: Clock) -> None:
    """defer() on an extracted capture keeps it extracted and out of due_for_projection until due."""
    digest = add(journal, "neo4j is down")
    extract(journal, digest)
    journal.captures.defer(digest, error="neo4j unreachable", delay_s=30)
    assert journal.captures.get(digest).state == "extracted"  # type: ignore[union-attr]
    assert journal.captures.due_for_projection() == []
    clock.now += 31
    assert [r.sha256 for r in journal.captures.due_for_projection()] == [digest]
    lag = journal.status.projection_lag()
    assert lag.count == 1 and lag.oldest_age_s == pytest.approx(31, abs=0.01)


def test_failed_captures_are_requeued_by_stage(journal: Journal) -> None:
    """requeue_failed('extract') sends extraction failures to queued and leaves other stages failed."""
    bad_model = add(journal, "the model failed")
    bad_graph = add(journal, "the graph refused")
    journal.captures.fail(bad_model, stage="extract", reason="no valid JSON", hint="try another model")
    assert journal.claims.claim("t") is not None
    journal.extractions.record(bad_graph, make_result())
    journal.captures.fail(bad_graph, stage="project", reason="constraint violated")
    assert journal.captures.requeue_failed("extract") == 1
    assert journal.captures.get(bad_model).state == "queued"  # type: ignore[union-attr]
    assert journal.captures.get(bad_graph).state == "failed"  # type: ignore[union-attr]
    assert journal.captures.requeue_failed("project") == 1
    assert journal.captures.get(bad_graph).state == "extracted"  # type: ignore[union-attr]


def test_failed_capture_dropped_again_is_queued_again(journal: Journal) -> None:
    """A failed capture enqueued again (moved back to the inbox) is queued with its error cleared."""
    digest = add(journal, "retry me")
    journal.captures.fail(digest, stage="extract", reason="bad output")
    result = journal.captures.enqueue(digest, "/inbox/retry.txt", "retry me")
    assert result.record.state == "queued" and result.record.last_error is None


def test_edit_finds_the_old_version_and_retraction_keeps_ingested_at(journal: Journal, clock: Clock) -> None:
    """The last capture at a path is found for retraction; re-adding retracted bytes re-projects them."""
    old = add(journal, "version 1", "/inbox/note.md")
    extract(journal, old)
    journal.captures.mark_done(old)
    first_ingested = journal.captures.get(old).ingested_at  # type: ignore[union-attr]
    clock.now += 60
    new = add(journal, "version 2", "/inbox/note.md")
    found = journal.captures.last_for_path("/inbox/note.md", exclude=new)
    assert found is not None and found.sha256 == old
    journal.captures.mark_retracted(old)
    assert journal.captures.last_for_path("/inbox/note.md", exclude=new) is None
    back = journal.captures.enqueue(old, "/inbox/note.md", "version 1")
    assert back.record.state == "extracted"  # its stored extraction is projected again, no model call
    assert back.record.ingested_at == first_ingested


def test_two_threads_never_claim_the_same_capture(tmp_path: Path) -> None:
    """Two threads claiming from one journal until it is empty take each capture exactly once."""
    with Journal(tmp_path / "j.sqlite3") as journal:
        digests = {add(journal, f"capture {i}") for i in range(150)}
        claimed: dict[str, list[str]] = {"a": [], "b": []}

        start = threading.Barrier(len(claimed))

        def worker(name: str) -> None:
            start.wait()
            while (record := journal.claims.claim(name)) is not None:
                claimed[name].append(record.sha256)
                time.sleep(0.001)  # hold the capture briefly, as a worker would, so claims interleave

        threads = [threading.Thread(target=worker, args=(name,)) for name in claimed]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        everything = claimed["a"] + claimed["b"]
        assert sorted(everything) == sorted(digests)
        assert claimed["a"] and claimed["b"], "both workers should have claimed something"


def test_connections_of_ended_threads_are_closed(journal: Journal) -> None:
    """A connection opened by a thread that has ended is closed when the next thread connects."""

    def use() -> None:
        journal.status.counts()

    for _ in range(5):
        thread = threading.Thread(target=use)
        thread.start()
        thread.join()
    assert len(journal._core._connections) <= 2  # this thread's and the last worker's


def test_two_journals_on_one_file_never_claim_the_same_capture(tmp_path: Path) -> None:
    """Separate Journal objects (as separate processes would) alternate claims without overlap."""
    path = tmp_path / "j.sqlite3"
    with Journal(path) as first, Journal(path) as second:
        for i in range(20):
            add(first, f"shared {i}")
        taken = [j.claims.claim("w") for _ in range(10) for j in (first, second)]
        assert None not in taken
        assert len({r.sha256 for r in taken if r is not None}) == 20
        assert first.claims.claim("w") is None and second.claims.claim("w") is None


_CLAIM_AND_HANG = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from membrane.journal import Journal
    from membrane.logs import configure_logging
    configure_logging("warning", "json")  # stdout carries only the claimed sha256
    journal = Journal(Path(sys.argv[1]))
    record = journal.claims.claim("doomed")
    print(record.sha256 if record else "none", flush=True)
    time.sleep(60)
    """
)


def _claim_in_killed_process(path: Path) -> str:
    proc = subprocess.Popen([sys.executable, "-c", _CLAIM_AND_HANG, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    return line


def test_claim_of_a_killed_process_is_recovered_at_open(tmp_path: Path) -> None:
    """A capture claimed by a process that was SIGKILLed is queued again when the journal opens."""
    path = tmp_path / "j.sqlite3"
    with Journal(path) as journal:
        digest = add(journal, "interrupted capture")
    assert _claim_in_killed_process(path) == digest
    with Journal(path) as journal:
        record = journal.captures.get(digest)
        assert record is not None and record.state == "queued" and record.claimed_by is None
        assert journal.claims.claim("next") is not None


def test_claim_of_an_earlier_process_with_our_pid_is_recovered(tmp_path: Path) -> None:
    """A claim carrying this pid but another process token (a reused pid) is recovered at open."""
    path = tmp_path / "j.sqlite3"
    with Journal(path) as journal:
        digest = add(journal, "claimed before a restart")
        record = journal.claims.claim("w")
        assert record is not None and record.claimed_by is not None
    host, pid, _token, worker = record.claimed_by.split(":", 3)
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE captures SET claimed_by = ?", (f"{host}:{pid}:oldtoken:{worker}",))
    db.close()
    with Journal(path) as journal:
        assert journal.captures.get(digest).state == "queued"  # type: ignore[union-attr]


def test_live_claim_of_this_process_survives_reopening(tmp_path: Path) -> None:
    """Opening the journal again in the same process leaves its own live claims alone."""
    path = tmp_path / "j.sqlite3"
    with Journal(path) as journal:
        digest = add(journal, "still working on it")
        assert journal.claims.claim("w") is not None
        with Journal(path) as second:
            assert second.captures.get(digest).state == "extracting"  # type: ignore[union-attr]


def test_capture_that_keeps_killing_the_process_fails(tmp_path: Path) -> None:
    """After max_interrupted lost claims the capture fails instead of crash-looping the daemon."""
    path = tmp_path / "j.sqlite3"
    with Journal(path, max_interrupted=2) as journal:
        digest = add(journal, "poison capture")
    for _ in range(2):
        assert _claim_in_killed_process(path) == digest
        Journal(path, max_interrupted=2).close()
    with Journal(path) as journal:
        record = journal.captures.get(digest)
        assert record is not None and record.state == "failed" and record.stage == "extract"
        assert "interrupted 2 times" in (record.last_error or "")
    with Journal(path, max_interrupted=2) as journal:
        again = journal.captures.enqueue(digest, "/inbox/poison.txt", "poison capture")
        assert again.record.state == "failed", "a file left in the inbox after the crash must not loop"


def test_expired_lease_can_be_claimed_again(journal: Journal, clock: Clock) -> None:
    """A claim whose lease ran out (a hung worker) is handed to the next claimant; renew prevents it."""
    digest = add(journal, "slow model")
    assert journal.claims.claim("hung", lease_s=10) is not None
    clock.now += 5
    journal.claims.renew(digest, lease_s=10)
    clock.now += 8
    assert journal.claims.claim("other") is None
    clock.now += 3
    again = journal.claims.claim("other")
    assert again is not None and again.sha256 == digest and again.claimed_by is not None
    assert again.claimed_by.endswith(":other")


def test_a_capture_failed_by_interruptions_has_no_retry_time(tmp_path: Path, clock: Clock) -> None:
    """A capture failed after its last lease ran out keeps no due time from an earlier retry."""
    with Journal(tmp_path / "j.sqlite3", clock=clock, max_interrupted=2) as journal:
        digest = add(journal, "crashes the model, then hangs")
        assert journal.claims.claim("t") is not None
        journal.claims.release(digest, error="the model crashed", delay_s=5, crashed=True)
        clock.now += 6
        assert journal.claims.claim("t", lease_s=10) is not None
        clock.now += 11
        assert journal.claims.claim("other") is None
        record = journal.captures.get(digest)
        assert record is not None and record.state == CaptureState.FAILED and record.stage == "extract"
        assert record.next_attempt_at is None


def test_status_reports_errors_and_rejections(journal: Journal, clock: Clock) -> None:
    """recent_errors lists failed, retrying and rejected items newest first with reason and hint."""
    failed = add(journal, "fails")
    retrying = add(journal, "retries")
    journal.captures.fail(failed, stage="extract", reason="no valid JSON", hint="try a stronger model")
    clock.now += 1
    journal.claims.claim("t")
    journal.claims.claim("t")
    journal.claims.release(retrying, error="model unreachable", delay_s=5)
    clock.now += 1
    journal.status.record_rejection("/inbox/bad.bin", reason="unknown extension .bin", hint="use .txt")
    errors = journal.status.recent_errors()
    assert [e["state"] for e in errors] == ["rejected", "queued", "failed"]
    assert errors[0]["path"] == "/inbox/bad.bin" and errors[0]["hint"] == "use .txt"
    assert errors[1]["attempts"] == 1 and errors[1]["next_attempt_at"] is not None
    assert errors[2]["stage"] == "extract" and errors[2]["hint"] == "try a stronger model"
    assert journal.status.pending() == 1


def test_facts_and_recorded_outputs_come_from_the_journal(journal: Journal) -> None:
    """facts() pairs each live capture with its extraction; recorded_outputs() gives text and output."""
    single = add(journal, "Ada wrote programs.")
    extract(journal, single, raw='{"a": 1}')
    chunked = add(journal, "first halfsecond half")
    claimed = journal.claims.claim("t")
    assert claimed is not None
    journal.extractions.record(chunked, make_result(raw_outputs=["one", "two"], chunks=[[0, 10], [10, 21]]))
    facts = list(journal.extractions.facts())
    assert [c.sha256 for c, _ in facts] == [single, chunked]
    assert facts[0][1].result.model == "smollm2-135m" and facts[1][1].result.chunks == ((0, 10), (10, 21))
    assert list(journal.extractions.recorded_outputs()) == [
        ("Ada wrote programs.", '{"a": 1}'),
        ("first half", "one"),
        ("second half", "two"),
    ]


def test_model_ref_splits_at_the_first_colon() -> None:
    """ModelRef.parse keeps Ollama tags whole and rejects text without a backend."""
    ref = ModelRef.parse("ollama:qwen2.5:1.5b")
    assert (ref.backend, ref.name, str(ref)) == ("ollama", "qwen2.5:1.5b", "ollama:qwen2.5:1.5b")
    with pytest.raises(MembraneError, match="backend:name"):
        ModelRef.parse("qwen2.5")


def test_promotion_rollback_and_history(journal: Journal) -> None:
    """Promotions set the active model, rollback restores the previous one, history keeps both."""
    configured = ModelRef("embedded", "smollm2-135m")
    qwen = ModelRef.parse("ollama:qwen2.5:1.5b")
    gemma = ModelRef("embedded", "gemma3-270m")
    assert journal.models.last_promotion() is None
    journal.models.set_active_model(qwen, reason="bench", evidence={"f1": 0.6}, replacing=configured)
    journal.models.set_active_model(gemma, reason="bench", evidence={"f1": 0.7})
    assert journal.models.last_promotion() == gemma
    assert journal.models.rollback_active_model(reason="worse in use") == qwen
    assert journal.models.last_promotion() == qwen
    assert journal.models.rollback_active_model(reason="again") == configured
    with pytest.raises(MembraneError, match="no previous champion"):
        journal.models.rollback_active_model(reason="nothing left")
    history = journal.models.promotions()
    assert [(h["kind"], h["previous"], h["new"]) for h in history] == [
        ("rollback", "ollama:qwen2.5:1.5b", "embedded:smollm2-135m"),
        ("rollback", "embedded:gemma3-270m", "ollama:qwen2.5:1.5b"),
        ("promote", "ollama:qwen2.5:1.5b", "embedded:gemma3-270m"),
        ("promote", "embedded:smollm2-135m", "ollama:qwen2.5:1.5b"),
    ]
    assert history[-1]["evidence"] == {"f1": 0.6} and history[0]["reason"] == "again"


def test_bench_runs_newest_first(journal: Journal) -> None:
    """record_bench_run returns increasing ids and bench_runs lists the newest first."""
    first = journal.models.record_bench_run({"models": ["a"], "score": 0.5})
    second = journal.models.record_bench_run({"models": ["b"], "score": 0.7})
    runs = journal.models.bench_runs()
    assert [r["id"] for r in runs] == [second, first]
    assert runs[0]["report"] == {"models": ["b"], "score": 0.7} and runs[0]["created_at"].endswith("Z")


def test_schema_is_migrated_once_and_in_wal_mode(tmp_path: Path) -> None:
    """The first open applies every migration, a second applies none; the file is in WAL mode."""
    path = tmp_path / "j.sqlite3"
    with Journal(path) as journal:
        assert journal.migrations_applied[0] == "m001_captures"
    with Journal(path) as journal:
        assert journal.migrations_applied == []
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = [r[0] for r in db.execute("SELECT name FROM _migrations ORDER BY name")]
        assert names == [
            "m001_captures",
            "m002_extractions",
            "m003_rejections",
            "m004_models",
            "m005_graph_retractions",
            "m006_search",
            "m007_captured_at",
        ]
    finally:
        db.close()


def test_unusable_journal_path_is_a_journal_error(tmp_path: Path) -> None:
    """A journal path that is a directory raises JournalError naming the path, not sqlite3.Error."""
    folder = tmp_path / "is-a-dir"
    folder.mkdir()
    with pytest.raises(JournalError, match="is-a-dir"):
        Journal(folder)


def test_closed_journal_refuses_work(tmp_path: Path) -> None:
    """Using a journal after close() raises JournalError."""
    journal = Journal(tmp_path / "j.sqlite3")
    journal.close()
    with pytest.raises(JournalError, match="closed"):
        journal.status.counts()


def test_an_old_journal_dates_its_captures_by_their_metadata(tmp_path: Path) -> None:
    """Migration m007 dates each capture written before it by its metadata's date, else its ingestion."""
    from membrane.journal.migrations import MIGRATIONS

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    for migration in MIGRATIONS[:6]:
        migration(db)
        db.execute("INSERT INTO _migrations VALUES (?, 'then')", (migration.__name__.lstrip("_"),))
    metadata = {
        "a": '{"captured_at": "2026-01-31T09:30:00Z"}',
        "b": '{"date": "soon", "created": "2024-03-05"}',
        "c": '{"date": "yesterday"}',
        "d": "{}",
    }
    for name, meta in metadata.items():
        db.execute(
            "INSERT INTO captures (sha256, path, text, metadata, state, ingested_at, updated_at) "
            "VALUES (?, ?, 'x', ?, 'done', '2026-06-01T00:00:00.000000Z', 'then')",
            (name * 64, name, meta),
        )
    db.commit()
    db.close()
    with Journal(path) as journal:
        assert journal.migrations_applied == ["m007_captured_at"]
        dates = {r.path: r.captured_at for r in journal.captures.in_states()}
    assert dates == {
        "a": "2026-01-31T09:30:00Z",
        "b": "2024-03-05",
        "c": "2026-06-01T00:00:00.000000Z",
        "d": "2026-06-01T00:00:00.000000Z",
    }


def test_captured_at_is_fixed_at_first_enqueue(tmp_path: Path) -> None:
    """The same bytes enqueued again (another copy, another mtime) keep the date they were first given."""
    with Journal(tmp_path / "j.sqlite3") as journal:
        journal.captures.enqueue("a" * 64, "a.txt", "x", captured_at="2024-03-05T10:00:00Z")
        again = journal.captures.enqueue("a" * 64, "copy/a.txt", "x", captured_at="2026-01-01T00:00:00Z")
        assert again.record.captured_at == "2024-03-05T10:00:00Z"
        undated = journal.captures.enqueue("b" * 64, "b.txt", "y")
        assert undated.record.captured_at == undated.record.ingested_at


def test_rekey_sends_a_renamed_capture_back_to_projection(journal: Journal) -> None:
    """rekey moves a done capture to its new path and back to extracted; a capture without facts is refused."""
    digest = add(journal, "renamed note", "notes/old.md")
    with pytest.raises(StaleClaim, match="cannot move queued -> extracted"):
        journal.captures.rekey(digest, "notes/new.md")
    extract(journal, digest)
    journal.captures.mark_done(digest)
    record = journal.captures.rekey(digest, "archive/new.md")
    assert record.state == CaptureState.EXTRACTED and record.path == "archive/new.md"
    assert journal.captures.rekey(digest, "archive/newer.md").path == "archive/newer.md"
