"""The stages for one capture, the journal updates between them, and the
retry-or-fail policy.

    admit:   stable file -> parse (capture.py) -> journal.captures.enqueue  (or failed/ + sidecar)
    work:    journal.claims.claim -> extract (active model) -> journal.extractions.record
    finish:  resolve -> project into Neo4j (replace an edited path's old version)
             -> journal.captures.mark_projected -> move the file to processed/
             -> journal.captures.mark_done
    retract: journal.captures.mark_retracted (graph half pending) -> GraphStore.retract
             -> journal.captures.mark_graph_retracted (retried by project_due and recover)

Policy, one line per error branch (membrane.errors):
- RetryableError: the capture keeps its state and is due again after
  backoff_delay(attempts, daemon.retry_base_s, daemon.retry_max_s); it never fails.
- PermanentError: journal.captures.fail(stage, reason, hint), then the file goes to
  failed/ with `<name>.error.json` beside it.
- ModelCrashed (a RetryableError): retried with the same backoff, but the
  daemon.max_model_crashes-th crash on one capture fails it with the crash's
  reason and fix (counted in the journal with the capture's interruptions,
  so a capture that kills the model every time ends, even across restarts).

Files are moved by inbox.FileMover (`self.files`), which also ends their claims;
this module only says when: after the journal commit, per path the journal
holds for the capture.

Ordering is what makes a SIGKILL at any point harmless: the file is touched
only after the journal committed the facts it would lose, every graph write is
an idempotent upsert, and `recover()` carries every intermediate state
(extracted, projected, file left in the inbox) to the end at start-up.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from membrane.capture import Capture, CaptureVanished, capture_path, read_capture
from membrane.champion import effective_champion
from membrane.clock import backoff_delay
from membrane.config import Settings
from membrane.errors import (
    CaptureRejected,
    ConfigError,
    GraphUnavailable,
    MembraneError,
    ModelCrashed,
    PermanentError,
    RetryableError,
)
from membrane.inbox import FileMover, regular_file_sha256
from membrane.journal import (
    DEFAULT_LEASE_S,
    FACT_STATES,
    CaptureRecord,
    CaptureState,
    Journal,
    JournalError,
    StaleClaim,
    read_recorded_outputs,
)
from membrane.logs import get_logger
from membrane.resolve import capture_facts
from membrane.schema import ModelRef
from membrane.vault import VaultIndex, linked

if TYPE_CHECKING:
    from membrane.extract import Extractor
    from membrane.graph.store import GraphStore
    from membrane.records import ExtractionResult

__all__ = [
    "ExtractorCache",
    "GraphLink",
    "Outcome",
    "Pipeline",
    "SyncReport",
    "sync",
]

log = get_logger(__name__)


@dataclass(frozen=True)
class Outcome:
    """What happened to one capture (or file) in one pass through the pipeline.

    state: the capture's journal state where it stopped, a CaptureState: done |
    extracted (facts in the journal, projection waiting) | queued (retry
    scheduled) | failed; or one of rejected (never became a capture) | waiting
    (queued or in work elsewhere) | gone (file vanished).
    """

    path: str
    state: str
    sha256: str | None = None
    stage: str = ""
    reason: str = ""

    @property
    def failed(self) -> bool:
        return self.state in (CaptureState.FAILED, "rejected")


class _LeaseKeeper:
    """Renews a claim's lease while a long extraction runs (a slow CPU, many chunks),
    so another worker does not take the capture as abandoned."""

    def __init__(self, journal: Journal, sha256: str, every_s: float = DEFAULT_LEASE_S / 3) -> None:
        self.journal, self.sha256, self.every_s = journal, sha256, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="membrane-lease", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.journal.claims.renew(self.sha256)
            except JournalError as exc:  # the claim is gone; the pipeline finds out when it records
                log.warning("lease_renewal_failed", sha256=self.sha256, error=str(exc))
                return

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class ExtractorCache:
    """One Extractor per ModelRef, built on first use (loading a model is expensive)."""

    def __init__(self, settings: Settings, build: Callable[[ModelRef], Extractor] | None = None) -> None:
        self._settings = settings
        self._build = build or self._default_build
        self._extractors: dict[ModelRef, Extractor] = {}
        self._lock = threading.Lock()

    def _default_build(self, ref: ModelRef) -> Extractor:
        from membrane.extract import build_extractor

        recorded = functools.partial(read_recorded_outputs, self._settings.journal.path)
        return build_extractor(self._settings, backend=ref.backend, model=ref.name, recorded=recorded)

    def get(self, ref: ModelRef) -> Extractor:
        with self._lock:
            extractor = self._extractors.get(ref)
            if extractor is None:
                extractor = self._extractors[ref] = self._build(ref)
            return extractor


class GraphLink:
    """The Neo4j connection, opened lazily and reopened after an outage.

    None of this exists in journal-only mode (no neo4j.uri): `enabled` is False.
    """

    def __init__(self, settings: Settings, store: GraphStore | None = None) -> None:
        self._settings = settings
        self._store = store
        self._lock = threading.Lock()
        self.migrated = False
        self._retry_at = 0.0

    @property
    def enabled(self) -> bool:
        return self._store is not None or self._settings.neo4j.enabled

    def store(self) -> GraphStore:
        """The connected store; raises GraphUnavailable (retryable) when Neo4j is down.

        After an outage was seen, calls fail at once until the pause given to
        reset() has passed: a backlog must not wait out the driver's connection
        timeout and retries once per capture.
        """
        with self._lock:
            if self._store is None and time.monotonic() < self._retry_at:
                raise GraphUnavailable("Neo4j was unavailable moments ago; waiting before reconnecting")
            if self._store is None:
                from membrane.graph.store import GraphStore

                self._store = GraphStore.connect(self._settings)
            if not self.migrated:
                self._store.migrate()
                self.migrated = True
            return self._store

    def reset(self, pause_s: float = 0.0) -> None:
        """Drop the connection after an outage; the next call reconnects after `pause_s`."""
        with self._lock:
            store, self._store = self._store, None
            self.migrated = False
            self._retry_at = time.monotonic() + pause_s
        if store is not None:
            try:
                store.close()
            except MembraneError:  # closing a dead connection; nothing left to save
                pass

    def close(self) -> None:
        self.reset()


class Pipeline:
    """Carries captures through the stages; safe to call from several worker threads."""

    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        *,
        graph: GraphLink | None = None,
        extractors: ExtractorCache | None = None,
        files: FileMover | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.graph = graph or GraphLink(settings)
        self.extractors = extractors or ExtractorCache(settings)
        self._finishing = threading.Lock()
        # Captures a worker is carrying to done, so project_due leaves them alone.
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        # The daemon passes its Inbox's mover, whose claims the moves end.
        self.files = files or FileMover(settings.inbox)
        self.inbox = Path(os.path.abspath(settings.inbox.path))
        # A vault's note names and aliases, which its links resolve against (built at the first note).
        self.vault_index = VaultIndex(settings.inbox) if settings.inbox.vault else None

    # -- paths

    def capture_path(self, path: Path) -> str:
        """The capture's identity: its path relative to the inbox, or absolute when outside it."""
        return capture_path(path, self.inbox)

    # -- admit: a stable file becomes a capture

    def admit(self, path: Path) -> Outcome:
        """Read and parse a stable file and record it in the journal.

        A rejected file goes to failed/ with its sidecar; a capture already
        carried to its facts (same bytes) only has its file moved out.
        """
        name = self.capture_path(path)
        try:
            capture = self._parse_file(path)
        except (CaptureVanished, FileNotFoundError):
            log.info("capture_vanished", path=name)
            return Outcome(name, "gone")
        except CaptureRejected as exc:
            return self._reject(path, name, exc)
        result = self.journal.captures.enqueue(
            capture.sha256, name, capture.text, capture.metadata, captured_at=capture.captured_at
        )
        record = result.record
        log.info("capture_admitted", path=name, sha256=record.sha256, state=record.state, new=result.created)
        if record.state in FACT_STATES and self._renamed(record, name):
            with self._holding(record.sha256):  # re-projected under its new path, not extracted again
                return self.finish(self.journal.captures.rekey(record.sha256, name))
        if record.state in FACT_STATES:
            # Same bytes already carried to their facts: not extracted again. A
            # capture not yet done is finished by the worker (project_due, recover).
            self.files.done(path, record.sha256)
            state = CaptureState.DONE if record.state == CaptureState.DONE else CaptureState.EXTRACTED
            return Outcome(name, state, record.sha256)
        if record.state == CaptureState.FAILED:
            self._dispose_failure(
                path,
                name,
                stage=record.stage or "",
                model="",
                sha256=record.sha256,
                error=PermanentError(record.last_error or "failed", hint=record.hint or ""),
            )
            return Outcome(name, CaptureState.FAILED, record.sha256, record.stage or "", record.last_error or "")
        return Outcome(name, "waiting", record.sha256)

    def _renamed(self, record: CaptureRecord, name: str) -> bool:
        """In a vault: known bytes at a new path while the path the capture goes by holds
        them no more (a note renamed or moved, seen as it happened or at a later scan)."""
        if not self.settings.inbox.vault or record.path == name:
            return False
        old = self.files.locate(record.path)
        try:
            return regular_file_sha256(old) != record.sha256
        except OSError:  # gone
            return True

    def _parse_file(self, path: Path) -> Capture:
        # A file named on the command line outside the inbox may not link out of its folder.
        root = self.inbox if self.files.inside(path) else Path(os.path.abspath(path)).parent
        capture = read_capture(path, self.settings.inbox, root=root)
        if self.vault_index is not None and self.files.inside(path):
            capture = linked(capture, self.vault_index)  # wikilinks resolved, tags gathered
        return capture

    def _reject(self, path: Path, name: str, exc: MembraneError) -> Outcome:
        self.journal.status.record_rejection(name, reason=exc.reason, hint=exc.hint, stage="read")
        log.warning("capture_rejected", path=name, reason=exc.reason)
        self._dispose_failure(path, name, stage="read", error=exc, model="", sha256=None)
        return Outcome(name, "rejected", None, "read", exc.reason)

    # -- work: extraction of a claimed capture

    def work_once(self, worker: str = "worker") -> Outcome | None:
        """Claim the oldest due queued capture and carry it as far as it goes; None when idle."""
        record = self.journal.claims.claim(worker)
        if record is None:
            return None
        try:
            return self._extract(record)
        except StaleClaim as exc:  # the lease ran out and someone else holds it now
            log.warning("capture_claim_lost", sha256=record.sha256, error=str(exc))
            return Outcome(record.path, "waiting", record.sha256)

    def _extract(self, record: CaptureRecord) -> Outcome:
        ref = effective_champion(self.settings, self.journal)
        try:
            with _LeaseKeeper(self.journal, record.sha256):
                result = self.extractors.get(ref).extract(record.text)
        except ModelCrashed as exc:
            return self._crashed(record, exc, str(ref))
        except (RetryableError, ConfigError) as exc:
            # ConfigError: the active model's backend or name is misconfigured (say, a champion
            # whose backend was removed). The capture is not at fault: it waits for the fix.
            if isinstance(exc, ConfigError):
                log.error("extraction_misconfigured", sha256=record.sha256, model=str(ref), error=str(exc))
            delay = self._retry_delay(record.attempts + 1, exc)
            self.journal.claims.release(record.sha256, error=f"{type(exc).__name__}: {exc}", delay_s=delay)
            return Outcome(record.path, CaptureState.QUEUED, record.sha256, "extract", str(exc))
        except PermanentError as exc:
            return self._fail(record, "extract", exc, str(ref))
        with self._holding(record.sha256):  # taken before the capture becomes due for projection
            return self._record_and_finish(record, result)

    def _record_and_finish(self, record: CaptureRecord, result: ExtractionResult) -> Outcome:
        self.journal.extractions.record(record.sha256, result)
        extracted = self.journal.captures.get(record.sha256)
        assert extracted is not None
        return self.finish(extracted, result)  # the result in hand: not read back from the journal

    def _crashed(self, record: CaptureRecord, exc: ModelCrashed, model: str) -> Outcome:
        """Back off and retry (the next call gets a new model process), or fail the capture
        once it has crashed the model daemon.max_model_crashes times."""
        crashes = record.interrupted + 1
        limit = self.settings.daemon.max_model_crashes
        log.error(
            "model_crashed", sha256=record.sha256, model=model, signal=exc.signal, crashes=crashes, error=str(exc)
        )
        if crashes >= limit:
            final = ModelCrashed(
                f"{exc} (crash {crashes} of daemon.max_model_crashes = {limit} on this capture)",
                signal=exc.signal,
                hint=exc.hint,
            )
            return self._fail(record, "extract", final, model)
        delay = self._delay(record.attempts + 1, exc)
        self.journal.claims.release(record.sha256, error=f"{type(exc).__name__}: {exc}", delay_s=delay, crashed=True)
        return Outcome(record.path, CaptureState.QUEUED, record.sha256, "extract", str(exc))

    def _delay(self, attempts: int, exc: RetryableError) -> float:
        daemon = self.settings.daemon
        delay = backoff_delay(attempts, daemon.retry_base_s, daemon.retry_max_s)
        return max(delay, min(exc.retry_after or 0.0, daemon.retry_max_s))

    def _retry_delay(self, attempts: int, exc: MembraneError) -> float:
        if isinstance(exc, RetryableError):
            return self._delay(attempts, exc)
        daemon = self.settings.daemon
        return backoff_delay(attempts, daemon.retry_base_s, daemon.retry_max_s)

    # -- finish: projection, file, done

    def finish(self, record: CaptureRecord, result: ExtractionResult | None = None) -> Outcome:
        """extracted|projected -> done: project (unless journal-only), move the file, mark done.

        `result` is the extraction just recorded; None (recovery, retries) reads the stored one.
        """
        if record.state == CaptureState.EXTRACTED:
            outcome = self._project(record, result)
            if outcome is not None:
                return outcome
        self._dispose_all(record.sha256)
        self.journal.captures.mark_done(record.sha256)
        log.info("capture_done", sha256=record.sha256, path=record.path)
        return Outcome(record.path, CaptureState.DONE, record.sha256)

    def _project(self, record: CaptureRecord, result: ExtractionResult | None) -> Outcome | None:
        """Project into Neo4j; an Outcome when the capture stops short of done."""
        old = self.journal.captures.last_for_path(record.path, exclude=record.sha256)
        if not self.graph.enabled:
            if old is not None:
                self.journal.captures.mark_retracted(old.sha256, graph=False)  # no graph to retract from
            return None
        try:
            store = self.graph.store()
            facts = capture_facts(record, result or self._stored_result(record), self.settings, store.entity_keys)
            if old is not None:
                store.replace(old.sha256, facts)
            else:
                store.upsert(facts)
        except (GraphUnavailable, ConfigError) as exc:
            # GraphUnavailable includes GraphAuthFailed (refused credentials); ConfigError is a
            # URI the driver rejects. Either way the facts wait in the journal, like an outage.
            delay = self._retry_delay(record.attempts + 1, exc)
            self.graph.reset(pause_s=min(delay, self.settings.daemon.retry_base_s))
            self.journal.captures.defer(record.sha256, error=f"{type(exc).__name__}: {exc}", delay_s=delay)
            # The facts are committed in the journal, so the file may leave the inbox now.
            self._dispose_all(record.sha256)
            log.warning("projection_deferred", sha256=record.sha256, error=str(exc))
            return Outcome(record.path, CaptureState.EXTRACTED, record.sha256, "project", str(exc))
        except PermanentError as exc:
            return self._fail(record, "project", exc, "")
        if old is not None:
            self.journal.captures.mark_retracted(old.sha256, graph=False)  # store.replace removed its facts
        self.journal.captures.mark_projected(record.sha256)
        return None

    def _stored_result(self, record: CaptureRecord) -> ExtractionResult:
        """The stored extraction of a capture carried on after a crash or an outage."""
        stored = self.journal.extractions.latest(record.sha256)
        if stored is None:
            raise JournalError(f"capture {record.sha256} is {record.state} but has no stored extraction")
        return stored.result

    def project_due(self, limit: int = 100) -> list[Outcome]:
        """Retry the graph retractions the journal holds, then projection of extracted
        captures whose backoff has passed.

        One thread at a time: the claim protects extraction, this lock protects
        projection and retraction retries, so no capture is finished twice at
        once, and a retraction never runs after its capture was projected again.
        """
        if not self._finishing.acquire(blocking=False):
            return []
        try:
            self._retract_due()
            outcomes = []
            for record in self.journal.captures.due_for_projection(limit=limit):
                with self._holding(record.sha256) as mine:
                    if mine:  # not one a worker is finishing right now
                        outcomes.append(self._finish_safely(record))
            return outcomes
        finally:
            self._finishing.release()

    @contextmanager
    def _holding(self, sha256: str) -> Iterator[bool]:
        """Hold a capture while finishing it; yields False if another thread holds it."""
        with self._held_lock:
            mine = sha256 not in self._held
            self._held.add(sha256)
        try:
            yield mine
        finally:
            if mine:
                with self._held_lock:
                    self._held.discard(sha256)

    def _finish_safely(self, record: CaptureRecord) -> Outcome:
        try:
            return self.finish(record)
        except StaleClaim as exc:  # another pass finished (or retracted) it meanwhile
            log.info("capture_finish_skipped", sha256=record.sha256, error=str(exc))
            return Outcome(record.path, "waiting", record.sha256)

    # -- failure

    def _fail(self, record: CaptureRecord, stage: str, exc: MembraneError, model: str) -> Outcome:
        self.journal.captures.fail(record.sha256, stage=stage, reason=exc.reason, hint=exc.hint)
        for name in self.journal.captures.paths(record.sha256):
            self._dispose_failure(
                self.files.locate(name), name, stage=stage, error=exc, model=model, sha256=record.sha256
            )
        return Outcome(record.path, CaptureState.FAILED, record.sha256, stage, exc.reason)

    def _dispose_failure(
        self, path: Path, name: str, *, stage: str, error: MembraneError, model: str, sha256: str | None
    ) -> None:
        """failed/ with its sidecar, if the file still holds these bytes; files outside the inbox stay put."""
        self.files.failed(
            path,
            reason=error.reason,
            stage=stage,
            hint=error.hint,
            model=model or None,
            sha256=sha256,
            details={"path": name, "error": type(error).__name__},
        )

    def _dispose_all(self, sha256: str) -> None:
        """Move out every inbox file that holds these bytes (the same capture may arrive twice)."""
        for name in self.journal.captures.paths(sha256):
            self.files.done(self.files.locate(name), sha256)

    # -- deletion

    def retract(self, sha256: str, *, reason: str) -> bool:
        """Withdraw a capture's facts (its file was deleted): journal first, then the graph.

        Returns False when the capture holds no facts. The journal keeps the
        graph half pending until Neo4j has done it, so an outage or a crash
        only delays it: project_due (and recover at start-up) retries it.
        """
        record = self.journal.captures.get(sha256)
        if record is None or record.state not in FACT_STATES:
            return False
        self.journal.captures.mark_retracted(sha256, graph=self.graph.enabled)
        log.info("capture_retracted", sha256=sha256, path=record.path, reason=reason)
        if self._finishing.acquire(blocking=False):  # else the pass running now does it
            try:
                self._retract_due()
            finally:
                self._finishing.release()
        return True

    def _retract_due(self) -> None:
        """The graph half of every journaled retraction still pending; kept on an outage.

        Called with self._finishing held."""
        if not self.graph.enabled:
            return
        due = self.journal.captures.retractions_due()
        if not due:
            return
        done = 0
        try:
            store = self.graph.store()
            for record in due:
                store.retract(record.sha256)
                self.journal.captures.mark_graph_retracted(record.sha256)
                done += 1
        except MembraneError as exc:  # an outage, or a refused write: they stay pending in the journal
            self.graph.reset(pause_s=self.settings.daemon.retry_base_s)
            log.warning("graph_retraction_deferred", count=len(due) - done, error=str(exc))

    # -- recovery

    def recover(self) -> list[Outcome]:
        """At start-up: carry every capture stopped between stages to the end.

        Claims of dead processes were returned to queued when the journal opened;
        here extracted and projected captures are finished (projection skipped
        when Neo4j is down: they wait) and pending graph retractions are retried.
        Files still in the inbox are found by the start-up scan and admitted
        again, which moves out those already done.
        """
        with self._finishing:
            self._retract_due()
            stopped = self.journal.captures.in_states((CaptureState.EXTRACTED, CaptureState.PROJECTED))
            return [self._finish_safely(r) for r in stopped]


@dataclass(frozen=True)
class SyncReport:
    """What `membrane sync` did."""

    projected: int
    retracted: int
    seconds: float


def sync(settings: Settings, journal: Journal, graph: GraphLink | None = None) -> SyncReport:
    """Make Neo4j the projection of the journal: upsert every capture with current
    facts (also into a wiped database), retract captures the journal no longer
    holds facts for (with graph.shared, only those whose retraction it still owes
    the graph). Idempotent; raises GraphUnavailable when Neo4j is down."""
    started = time.monotonic()
    link = graph or GraphLink(settings)
    if not link.enabled:
        raise ConfigError(
            "neo4j.uri is empty: there is no Neo4j to sync into",
            key="neo4j.uri",
            hint="Set [neo4j] uri (or MEMBRANE_NEO4J__URI), or use `membrane export`.",
        )
    try:
        store = link.store()
        facts = list(journal.extractions.facts())
        records = [record for record, _ in facts]
        store.upsert_many(capture_facts(r, stored.result, settings, store.entity_keys) for r, stored in facts)
        current = {record.sha256 for record in records}
        for record in records:
            if record.state == CaptureState.EXTRACTED:
                try:
                    journal.captures.mark_projected(record.sha256)
                except StaleClaim:  # the daemon moved it on meanwhile
                    pass
        stale = store.capture_shas() - current
        if settings.graph.shared:  # the rest are other daemons' captures, or bytes another daemon holds too
            stale &= {record.sha256 for record in journal.captures.retractions_due(limit=None)}
        for sha256 in sorted(stale):
            store.retract(sha256)
        for record in journal.captures.retractions_due(limit=None):  # the graph now holds none of them
            journal.captures.mark_graph_retracted(record.sha256)
    finally:
        if graph is None:
            link.close()
    report = SyncReport(len(current), len(stale), time.monotonic() - started)
    log.info("sync_finished", projected=report.projected, retracted=report.retracted, seconds=round(report.seconds, 3))
    return report
