"""The pipeline in process: stages, journal states, retry-or-fail, edits,
journal-only mode with export, and sync into a real Neo4j."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from membrane.backends import BackendCheck, Generation, GenerationRequest, register_backend
from membrane.config import Settings
from membrane.daemon import ingest
from membrane.errors import ModelUnavailable
from membrane.export import collect, cypher_statements, write_jsonl
from membrane.graph.cypher import cypher_literal
from membrane.inbox import Inbox
from membrane.journal import Journal
from membrane.pipeline import Pipeline, sync
from membrane.resolve import entity_key
from membrane.schema import ModelRef
from tests.support.extraction import make_result
from tests.support.pipeline import graph_snapshot, note, replay_for, settings_sections, write_replay


def _settings(make_settings: Callable[..., Settings], tmp_path: Path, count: int = 5, **extra: Any) -> Settings:
    sections = settings_sections(tmp_path, replay_for(count, tmp_path / "replay.jsonl"), **extra)
    return make_settings(**sections)


def _keys(i: int) -> set[str]:
    return {entity_key(e["name"]) for e in json.loads(note(i)[2])["entities"]}


def _drop(settings: Settings, indexes: range | list[int]) -> list[Path]:
    settings.inbox.path.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in indexes:
        name, text, _ = note(i)
        path = settings.inbox.path / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def test_ingest_journal_only_moves_files_after_commit(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Good captures end done with their files in processed/; the journal holds their facts."""
    settings = _settings(make_settings, tmp_path)
    _drop(settings, range(3))
    report = ingest(settings, [settings.inbox.path])
    assert report.ok and [o.state for o in report.outcomes] == ["done"] * 3
    assert sorted(p.name for p in settings.inbox.processed.iterdir()) == [note(i)[0] for i in range(3)]
    assert not list(settings.inbox.path.glob("*.txt"))
    with Journal(settings.journal.path) as journal:
        assert journal.status.counts()["done"] == 3
        assert all(journal.extractions.latest(o.sha256 or "") for o in report.outcomes)


def test_same_bytes_are_not_extracted_again(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A capture whose sha256 is done is not extracted again; its new file still moves out."""
    settings = _settings(make_settings, tmp_path)
    (path,) = _drop(settings, [0])
    ingest(settings, [path])
    again = settings.inbox.path / "copy-of-note.txt"
    again.write_text(note(0)[1], encoding="utf-8")
    report = ingest(settings, [again])
    assert report.ok
    assert (settings.inbox.processed / "copy-of-note.txt").exists()
    with Journal(settings.journal.path) as journal:
        assert len(list(journal.extractions.recorded_outputs())) == 1  # one extraction only


def test_rejected_files_reach_failed_with_sidecars(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Unreadable captures go to failed/ with a sidecar naming reason, stage and hint; ingest reports them."""
    settings = _settings(make_settings, tmp_path)
    settings.inbox.path.mkdir(parents=True)
    (settings.inbox.path / "binary.txt").write_bytes(b"abc\x00def")
    (settings.inbox.path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (settings.inbox.path / "empty.md").write_bytes(b"")
    (settings.inbox.path / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    report = ingest(settings, [settings.inbox.path])
    assert not report.ok and len(report.failed) == 4
    for name in ("binary.txt", "latin1.txt", "empty.md", "photo.jpg"):
        sidecar = json.loads((settings.inbox.failed / f"{name}.error.json").read_text(encoding="utf-8"))
        assert sidecar["stage"] == "read" and sidecar["reason"] and sidecar["hint"] and sidecar["time"]


class _FlakyBackend:
    """Refuses the first `failures` calls as an unreachable server would, then answers from a replay file."""

    name = "flaky"
    calls = 0

    def __init__(self, settings: Settings, failures: int) -> None:
        from membrane.backends.replay import ReplayBackend

        self.inner = ReplayBackend.from_settings(settings)
        self.failures = failures

    def generate(self, request: GenerationRequest) -> Generation:
        _FlakyBackend.calls += 1
        if _FlakyBackend.calls <= self.failures:
            raise ModelUnavailable("connection refused (test)")
        return self.inner.generate(request)

    def list_models(self) -> list[str]:
        return ["recorded"]

    def check(self, model: str) -> BackendCheck:
        return BackendCheck(True, "flaky")

    def parameters(self, model: str) -> str:
        return ""


def test_retryable_error_backs_off_and_never_fails(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A model outage leaves the capture queued with a growing backoff; it is done once the model answers."""
    _FlakyBackend.calls = 0
    register_backend("flaky", lambda s: _FlakyBackend(s, failures=2))
    settings = _settings(make_settings, tmp_path, daemon={"retry_base_s": 0.2, "retry_max_s": 5.0})
    with Journal(settings.journal.path) as journal:  # a promoted plugin backend, as a bench would leave it
        journal.models.set_active_model(ModelRef("flaky", "recorded"), reason="test", evidence={})
    (path,) = _drop(settings, [1])
    first = ingest(settings, [path])
    assert first.outcomes[0].state == "queued" and not first.failed
    with Journal(settings.journal.path) as journal:
        record = journal.captures.get(first.outcomes[0].sha256 or "")
        assert record is not None and record.attempts == 1 and record.next_attempt_at is not None
        assert "connection refused" in (record.last_error or "")
    assert path.exists()  # nothing committed yet, so the file stays in the inbox
    import time

    time.sleep(0.25)
    second = ingest(settings, [path])
    assert second.outcomes[0].state == "queued"
    time.sleep(0.45)  # second backoff: 0.2 * 2
    third = ingest(settings, [path])
    assert third.ok and third.outcomes[0].state == "done"


def test_extraction_failure_goes_to_failed_with_model(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Invalid model output beyond the repair budget fails the capture with stage extract and the model named."""
    settings = _settings(make_settings, tmp_path, extraction={"max_repairs": 1})
    write_replay(settings.model.replay_file or tmp_path / "r", [("Broken note.", "{not json")])
    settings.inbox.path.mkdir(parents=True)
    path = settings.inbox.path / "broken.txt"
    path.write_text("Broken note.", encoding="utf-8")
    report = ingest(settings, [path])
    assert report.failed and report.outcomes[0].stage == "extract"
    sidecar = json.loads((settings.inbox.failed / "broken.txt.error.json").read_text(encoding="utf-8"))
    assert sidecar["stage"] == "extract" and sidecar["model"] == "replay:recorded" and sidecar["hint"]


def test_edit_retracts_the_old_version_in_journal_only_mode(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """New bytes at a known path replace the old version: the export holds only the new facts."""
    settings = _settings(make_settings, tmp_path)
    path = settings.inbox.path / "same-name.txt"
    settings.inbox.path.mkdir(parents=True)
    path.write_text(note(0)[1], encoding="utf-8")
    ingest(settings, [path])
    path.write_text(note(1)[1], encoding="utf-8")
    assert ingest(settings, [path]).ok
    with Journal(settings.journal.path) as journal:
        graph = collect(settings, journal)
        assert journal.status.counts()["retracted"] == 1
    assert [c.path for c in graph.captures] == ["same-name.txt"]
    assert {e.key for e in graph.entities} == _keys(1)


def test_effective_champion_is_looked_up_per_capture(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A promotion applies to the next capture without a restart."""
    settings = _settings(make_settings, tmp_path)
    _drop(settings, [0, 1])
    with Journal(settings.journal.path) as journal:
        pipeline = Pipeline(settings, journal)
        pipeline.admit(settings.inbox.path / note(0)[0])
        first = pipeline.work_once()
        journal.models.set_active_model(ModelRef("replay", "champion"), reason="test", evidence={})
        pipeline.admit(settings.inbox.path / note(1)[0])
        second = pipeline.work_once()
        assert first is not None and second is not None
        stored = [journal.extractions.latest(o.sha256 or "") for o in (first, second)]
        models = [s.result.model for s in stored]  # type: ignore[union-attr]
    assert models == ["recorded", "champion"]


def test_jsonl_export_matches_the_journal(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """The JSONL export lists each capture, entity, mention and typed relationship once."""
    settings = _settings(make_settings, tmp_path)
    _drop(settings, range(5))
    ingest(settings, [settings.inbox.path])
    import io

    out = io.StringIO()
    with Journal(settings.journal.path) as journal:
        write_jsonl(collect(settings, journal), out)
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    kinds = [r["kind"] for r in records]
    assert kinds.count("capture") == 5 and kinds.count("relationship") == 5
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", r["type"]) for r in records if r["kind"] == "relationship")


def test_cypher_literal_escapes_hostile_text() -> None:
    """Quotes, backslashes, newlines and separators cannot end a Cypher string literal."""
    literal = cypher_literal("a'b\\c\nd\u2028e`f")
    assert literal == "'a\\'b\\\\c\\nd\\u2028e`f'"
    assert "\n" not in cypher_literal(["x\ny", {"k": "v'"}])


HOSTILE = "Robert'}) DETACH DELETE n //\nline 2 \\ `tick` 東京"


def _run_cypher_script(driver: Any, lines: list[str]) -> None:
    """Execute an exported script the way cypher-shell would: :param lines, then statements."""
    params: dict[str, Any] = {}
    for line in lines:
        if line.startswith(":param "):
            name, _, literal = line[len(":param ") :].partition(" => ")
            # The literal is evaluated by Neo4j itself: a broken escape would fail or change the value.
            params[name] = driver.execute_query(f"RETURN {literal} AS value").records[0]["value"]
        else:
            driver.execute_query(line.removesuffix(";"), params)


@pytest.mark.neo4j
def test_cypher_export_rebuilds_the_synced_graph(
    make_settings: Callable[..., Settings], tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """Running the Cypher export on an empty database gives the graph sync writes, hostile names included."""
    output = {
        "entities": [{"name": HOSTILE, "role": "subject"}, {"name": "Paris", "role": "object"}],
        "relationships": [{"source": HOSTILE, "relation": "lives in", "target": "Paris"}],
    }
    note_text = f"{HOSTILE} lives in Paris."  # the names are in the text, so grounding keeps them
    replay = replay_for(3, tmp_path / "replay.jsonl", extra=[(note_text, json.dumps(output))])
    settings = make_settings(**settings_sections(tmp_path, replay, neo4j=neo4j_settings))
    _drop(settings, range(3))
    (settings.inbox.path / "hostile.txt").write_text(note_text, encoding="utf-8")
    assert ingest(settings, [settings.inbox.path]).ok
    synced = graph_snapshot(neo4j)
    assert any(name == HOSTILE for _, name, _ in synced["entities"])
    with Journal(settings.journal.path) as journal:
        lines = list(cypher_statements(collect(settings, journal)))
    assert all("\n" not in line for line in lines)
    neo4j.execute_query("MATCH (n) DETACH DELETE n")
    _run_cypher_script(neo4j, lines)
    assert graph_snapshot(neo4j) == synced


@pytest.mark.neo4j
def test_sync_rebuilds_a_wiped_database(
    make_settings: Callable[..., Settings], tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """`sync` projects the journal into an empty database, idempotently, and drops captures it no longer holds."""
    settings = make_settings(**settings_sections(tmp_path, replay_for(6, tmp_path / "r.jsonl"), neo4j=neo4j_settings))
    _drop(settings, range(6))
    assert ingest(settings, [settings.inbox.path]).ok
    before = graph_snapshot(neo4j)
    assert len(before["captures"]) == 6
    neo4j.execute_query("MATCH (n) DETACH DELETE n")
    neo4j.execute_query("CREATE (:Capture {sha256: 'stale'})")
    with Journal(settings.journal.path) as journal:
        report = sync(settings, journal)
        again = sync(settings, journal)
    assert (report.projected, report.retracted) == (6, 1)
    assert (again.projected, again.retracted) == (6, 0)
    assert graph_snapshot(neo4j) == before


@pytest.mark.neo4j
def test_edit_replaces_the_old_version_in_the_graph(
    make_settings: Callable[..., Settings], tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """Editing a capture retracts the facts only the old version supported."""
    settings = make_settings(**settings_sections(tmp_path, replay_for(3, tmp_path / "r.jsonl"), neo4j=neo4j_settings))
    settings.inbox.path.mkdir(parents=True)
    path = settings.inbox.path / "edited.txt"
    path.write_text(note(0)[1], encoding="utf-8")
    ingest(settings, [path])
    path.write_text(note(2)[1], encoding="utf-8")
    assert ingest(settings, [path]).ok
    snapshot = graph_snapshot(neo4j)
    assert [c[1] for c in snapshot["captures"]] == ["edited.txt"]
    assert {k for k, _, _ in snapshot["entities"]} == _keys(2)


def _replay_settings(make_settings: Callable[..., Settings], tmp_path: Path, count: int) -> Settings:
    settings = make_settings(model={"backend": "replay", "replay_file": replay_for(count, tmp_path / "r.jsonl")})
    settings.inbox.path.mkdir(parents=True)
    return settings


def test_a_misconfigured_model_keeps_the_capture_queued(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A champion whose backend does not exist leaves the capture queued with the error instead of killing the
    worker."""
    settings = _replay_settings(make_settings, tmp_path, 1)
    path = settings.inbox.path / note(0)[0]
    path.write_text(note(0)[1], encoding="utf-8")
    with Journal(settings.journal.path) as journal:
        journal.models.set_active_model(ModelRef("nosuch", "model"), reason="test", evidence={})
        pipeline = Pipeline(settings, journal)
        pipeline.admit(path)
        outcome = pipeline.work_once()
        assert outcome is not None and (outcome.state, outcome.stage) == ("queued", "extract")
        record = journal.captures.get(outcome.sha256 or "")
        assert record is not None and record.state == "queued"
        assert "ConfigError" in (record.last_error or "")
    assert path.exists()


def test_a_file_deleted_while_queued_is_released(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A file deleted after the inbox handed it out leaves the inbox idle, and a new file under its name is
    handed out."""
    settings = _replay_settings(make_settings, tmp_path, 2)
    path = settings.inbox.path / note(0)[0]
    path.write_text(note(0)[1], encoding="utf-8")
    with Journal(settings.journal.path) as journal:
        with Inbox(settings.inbox) as inbox:
            pipeline = Pipeline(settings, journal, files=inbox.mover)
            assert inbox.get(timeout=10) == path
            pipeline.admit(path)
            path.unlink()
            outcome = pipeline.work_once()
            assert outcome is not None and outcome.state == "done"
            assert inbox.pending() == 0
            path.write_text(note(1)[1], encoding="utf-8")
            assert inbox.get(timeout=10) == path


@pytest.mark.neo4j
def test_recover_finishes_a_retraction_the_graph_missed(
    make_settings: Callable[..., Settings], tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """A capture retracted in the journal but still in the graph (a crash between the two) is removed at start-up."""
    settings = make_settings(**settings_sections(tmp_path, replay_for(2, tmp_path / "r.jsonl"), neo4j=neo4j_settings))
    settings.inbox.path.mkdir(parents=True)
    for i in range(2):
        (settings.inbox.path / note(i)[0]).write_text(note(i)[1], encoding="utf-8")
    assert ingest(settings, [settings.inbox.path]).ok
    assert len(graph_snapshot(neo4j)["captures"]) == 2
    with Journal(settings.journal.path) as journal:
        gone = journal.captures.last_for_path(note(0)[0])
        assert gone is not None
        journal.captures.mark_retracted(gone.sha256)  # the journal's half of a retraction, then a crash
        pipeline = Pipeline(settings, journal)
        try:
            pipeline.recover()
        finally:
            pipeline.graph.close()
    assert [path for _, path, _ in graph_snapshot(neo4j)["captures"]] == [note(1)[0]]


def test_project_due_leaves_alone_a_capture_a_worker_is_finishing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """With several workers, a capture one of them is carrying to done is not finished a second time."""
    settings = _replay_settings(make_settings, tmp_path, 1)
    path = settings.inbox.path / note(0)[0]
    path.write_text(note(0)[1], encoding="utf-8")
    with Journal(settings.journal.path) as journal:
        pipeline = Pipeline(settings, journal)
        pipeline.admit(path)
        record = journal.claims.claim("worker-1")
        assert record is not None
        with pipeline._holding(record.sha256):  # worker-1 between record_extraction and done
            journal.extractions.record(record.sha256, make_result(model="recorded", backend="replay"))
            assert pipeline.project_due() == []
            assert journal.captures.get(record.sha256).state == "extracted"  # type: ignore[union-attr]
        assert [outcome.state for outcome in pipeline.project_due()] == ["done"]


@pytest.mark.neo4j
def test_finish_projects_the_result_it_is_given_and_recovery_the_stored_one(
    make_settings: Callable[..., Settings], tmp_path: Path, neo4j: Any, neo4j_settings: dict[str, Any]
) -> None:
    """A worker's fresh result goes to the graph as handed over (no read-back); without one, the journal's is used."""
    settings = make_settings(**settings_sections(tmp_path, replay_for(2, tmp_path / "r.jsonl"), neo4j=neo4j_settings))
    settings.inbox.path.mkdir(parents=True)
    with Journal(settings.journal.path) as journal:
        pipeline = Pipeline(settings, journal)
        try:
            for i, fresh in ((0, "Fresh"), (1, None)):
                path = settings.inbox.path / note(i)[0]
                path.write_text(note(i)[1], encoding="utf-8")
                pipeline.admit(path)
                claimed = journal.claims.claim("t")
                assert claimed is not None
                journal.extractions.record(claimed.sha256, make_result(_facts(f"Stored{i}")))
                extracted = journal.captures.get(claimed.sha256)
                assert extracted is not None
                result = make_result(_facts(fresh)) if fresh else None
                assert pipeline.finish(extracted, result).state == "done"
        finally:
            pipeline.graph.close()
    assert [key for key, _, _ in graph_snapshot(neo4j)["entities"]] == ["fresh", "stored1"]


def _facts(name: str) -> dict[str, Any]:
    return {"entities": [{"name": name, "role": "subject"}], "relationships": []}
