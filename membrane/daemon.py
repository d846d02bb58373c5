"""The long-running service and the burst run: start-up checks, the inbox
watcher, the worker threads, SIGTERM, the bench scheduler, sd_notify.

`Daemon.run()` (``membrane run``): open the journal, run graph migrations when
Neo4j is configured, recover captures stopped between stages, start the inbox
watcher and `daemon.concurrency` workers, then send READY=1. While the workers
and the watcher are alive it pings WATCHDOG=1 at half of $WATCHDOG_USEC and
sends STATUS= lines. SIGTERM/SIGINT: each worker finishes the capture in hand
(up to daemon.shutdown_timeout_s); the rest stays queued in the journal.

`ingest()` (``membrane ingest PATH...``): the same pipeline, once, for the
given files and folders, until nothing is left to do (arq's burst mode).

This module wires the threads only: the watcher, the file mover and the
deletion watch are inbox.py's, the stages pipeline.py's.

sd_notify is a datagram on the AF_UNIX socket named by $NOTIFY_SOCKET ('@' is
the abstract namespace); outside systemd it is unset and notifying is a no-op.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from membrane.champion import effective_champion
from membrane.config import Settings
from membrane.errors import GraphUnavailable, MembraneError
from membrane.inbox import DeletionWatch, Inbox, InboxFolders
from membrane.journal import CaptureState, Journal, JournalError
from membrane.logs import get_logger
from membrane.pipeline import GraphLink, Outcome, Pipeline

__all__ = ["Daemon", "IngestReport", "Notifier", "ingest", "watchdog_interval"]

log = get_logger(__name__)

# The states the systemd status line counts, in this order (the others are shown by `membrane status`).
_STATUS_LINE_STATES = (
    CaptureState.QUEUED,
    CaptureState.EXTRACTING,
    CaptureState.EXTRACTED,
    CaptureState.DONE,
    CaptureState.FAILED,
)


# ---------------------------------------------------------------- sd_notify


class Notifier:
    """Sends sd_notify messages; silent when $NOTIFY_SOCKET is not set."""

    def __init__(self, address: str | None = None) -> None:
        raw = os.environ.get("NOTIFY_SOCKET", "") if address is None else address
        # Abstract-namespace sockets are written with a leading '@' and sent with a NUL.
        self.address = "\0" + raw[1:] if raw.startswith("@") else raw

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Send one message made of `KEY=value` lines; False when not sent."""
        if not self.enabled:
            return False
        message = "\n".join(line.replace("\n", " ") for line in lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(message)
        except OSError as exc:
            # systemd going away must never take the daemon down with it.
            log.warning("sd_notify_failed", error=str(exc))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, or None when unset.

    $WATCHDOG_PID, when set, must be this process (systemd sets it for the main PID).
    """
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2_000_000


# ---------------------------------------------------------------- workers


class _Worker(threading.Thread):
    """Claims captures and carries each to its end; stops between captures."""

    def __init__(
        self,
        index: int,
        pipeline: Pipeline,
        stop: threading.Event,
        wake: threading.Event,
        idle_s: float,
        *,
        burst: bool = False,
    ) -> None:
        super().__init__(name=f"membrane-worker-{index}", daemon=True)
        self.worker_id = f"w{index}"
        self.pipeline = pipeline
        self.stop = stop
        self.wake = wake
        self.idle_s = idle_s
        self.burst = burst
        self.outcomes: list[Outcome] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                outcome = self.pipeline.work_once(self.worker_id)
                if outcome is not None:
                    self.outcomes.append(outcome)
                    continue
                self.outcomes.extend(self.pipeline.project_due())
                if self.burst:
                    return
                self.wake.wait(self.idle_s)
                self.wake.clear()
        except JournalError as exc:
            # The journal is the source of truth; without it nothing is safe to do.
            self.error = exc
            log.error("worker_stopped", worker=self.worker_id, error=str(exc))
        except BaseException as exc:  # noqa: BLE001 - a dead worker must be visible to the watchdog
            self.error = exc
            log.exception("worker_crashed", worker=self.worker_id)


# ---------------------------------------------------------------- burst mode


@dataclass(frozen=True)
class IngestReport:
    """What `membrane ingest` did: one final Outcome per file given."""

    outcomes: tuple[Outcome, ...]
    seconds: float

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def unfinished(self) -> list[Outcome]:
        """Captures left waiting for a retry (model or Neo4j unavailable)."""
        return [o for o in self.outcomes if o.state in (CaptureState.QUEUED, CaptureState.EXTRACTED, "waiting")]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.unfinished


def _candidate_files(paths: Sequence[Path], folders: InboxFolders) -> list[Path]:
    """Files named, and the captures in folders named (the inbox's ignore rules)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            files.extend(folders.scan(path))
        else:
            files.append(path)
    return files


def ingest(
    settings: Settings, paths: Sequence[Path], *, journal: Journal | None = None, pipeline: Pipeline | None = None
) -> IngestReport:
    """Process the given files (and folders' captures) now, through the whole pipeline, and return."""
    started = time.monotonic()
    own_journal = journal is None
    journal = journal or Journal(settings.journal.path)
    pipeline = pipeline or Pipeline(settings, journal)
    try:
        pipeline.recover()
        admitted = [pipeline.admit(path) for path in _candidate_files(paths, pipeline.files.folders)]
        _drain(pipeline, settings.daemon.concurrency)
        outcomes = tuple(_final(journal, outcome) for outcome in admitted)
    finally:
        pipeline.graph.close()
        if own_journal:
            journal.close()
    report = IngestReport(outcomes, time.monotonic() - started)
    log.info(
        "ingest_finished",
        files=len(outcomes),
        failed=len(report.failed),
        unfinished=len(report.unfinished),
        seconds=round(report.seconds, 3),
    )
    return report


def _drain(pipeline: Pipeline, concurrency: int) -> None:
    stop, wake = threading.Event(), threading.Event()
    workers = [_Worker(i, pipeline, stop, wake, 0.0, burst=True) for i in range(concurrency)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    errors = [w.error for w in workers if w.error is not None]
    if errors:
        raise errors[0] if isinstance(errors[0], MembraneError) else MembraneError(str(errors[0]))


def _final(journal: Journal, outcome: Outcome) -> Outcome:
    """The admitted file's state after the drain, read back from the journal."""
    if outcome.sha256 is None or outcome.failed:
        return outcome
    record = journal.captures.get(outcome.sha256)
    if record is None:
        return outcome
    return Outcome(outcome.path, record.state, record.sha256, record.stage or "", record.last_error or "")


# ---------------------------------------------------------------- the daemon


class Daemon:
    """`membrane run`: watcher + workers + scheduler until SIGTERM."""

    def __init__(self, settings: Settings, *, notifier: Notifier | None = None, install_signals: bool = True) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.install_signals = install_signals
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.journal: Journal | None = None
        self.pipeline: Pipeline | None = None
        self.workers: list[_Worker] = []
        self.watcher: Inbox | None = None
        self.scheduler: Any = None
        self.admitter: threading.Thread | None = None
        self.deletions: DeletionWatch | None = None
        self.retractions: queue.Queue[str] = queue.Queue()

    # -- lifecycle

    def request_stop(self, *_: Any) -> None:
        """Finish the captures in hand and stop (the SIGTERM handler)."""
        if not self.stop_event.is_set():
            log.info("daemon_stopping")
        self.stop_event.set()
        self.wake.set()

    def run(self) -> int:
        """Run until stopped; returns the process exit code (0 clean, 1 a part died)."""
        if self.install_signals:
            self._install_signals()
        try:
            self.start()
            return self._supervise()
        finally:
            self.shutdown()

    def start(self) -> None:
        """Start-up checks, recovery, watcher, workers, scheduler; then READY=1."""
        self.notifier.status("starting: journal")
        self.journal = Journal(self.settings.journal.path)
        graph = GraphLink(self.settings)
        inbox = Inbox(self.settings.inbox)  # its mover moves the files the pipeline is done with
        self.pipeline = Pipeline(self.settings, self.journal, graph=graph, files=inbox.mover)
        if graph.enabled:
            self.notifier.status("starting: Neo4j migrations")
            try:
                graph.store()
            except GraphUnavailable as exc:
                # Extraction goes on without Neo4j; projection resumes when it is back.
                log.warning("graph_unavailable_at_start", error=str(exc))
                graph.reset(pause_s=self.settings.daemon.retry_base_s)
        self.pipeline.recover()
        inbox_settings = self.settings.inbox
        if self.settings.graph.on_capture_deleted == "retract" and (
            inbox_settings.on_success == "move" or inbox_settings.vault
        ):
            self.deletions = DeletionWatch(inbox.mover, self.retractions)
            self.deletions.start()
        inbox.start()
        self.watcher = inbox
        self.admitter = threading.Thread(target=self._admit_loop, name="membrane-admitter", daemon=True)
        self.admitter.start()
        self.workers = [
            _Worker(i, self.pipeline, self.stop_event, self.wake, self.settings.daemon.idle_poll_s)
            for i in range(self.settings.daemon.concurrency)
        ]
        for worker in self.workers:
            worker.start()
        self.scheduler = self._start_scheduler()
        log.info(
            "daemon_ready",
            inbox=str(self.settings.inbox.path),
            concurrency=len(self.workers),
            neo4j=graph.enabled,
            model=str(effective_champion(self.settings, self.journal)),
        )
        self.notifier.ready(self.status_line())

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.request_stop()

    def _supervise(self) -> int:
        interval = watchdog_interval()
        tick = min(interval, 5.0) if interval else 5.0
        last_status = ""
        while not self.stop_event.wait(tick):
            if not self.healthy():
                log.error("daemon_unhealthy", workers=[w.is_alive() for w in self.workers])
                self.notifier.status("unhealthy: a worker or the inbox watcher died")
                return 1
            self.notifier.watchdog()
            line = self.status_line()
            if line != last_status:
                self.notifier.status(line)
                last_status = line
        return 0

    def healthy(self) -> bool:
        """Workers alive and the inbox watcher alive (it restarts its own observer)."""
        parts_alive = [w.is_alive() for w in self.workers]
        parts_alive.append(self.admitter is not None and self.admitter.is_alive())
        parts_alive.append(bool(self.watcher is not None and self.watcher.alive))
        if self.deletions is not None:
            parts_alive.append(self.deletions.alive)
        return all(parts_alive)

    def shutdown(self) -> None:
        """Stop admitting, let workers finish the capture in hand, then close everything."""
        self.request_stop()
        self.notifier.stopping("stopping: finishing the captures in hand")
        if self.admitter is not None:
            self.admitter.join(timeout=5)
        stops: list[Callable[[], Any]] = []
        if self.scheduler is not None:
            # A bench in progress is abandoned, not awaited: SIGTERM must not wait for minutes.
            stops.append(lambda: self.scheduler.shutdown(wait=False))
        stops += [part.stop for part in (self.watcher, self.deletions) if part is not None]
        for stop in stops:
            try:
                stop()
            except Exception:  # noqa: BLE001 - shutting down: log and go on
                log.exception("daemon_part_stop_failed")
        deadline = time.monotonic() + self.settings.daemon.shutdown_timeout_s
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        busy = [w.worker_id for w in self.workers if w.is_alive()]
        if busy:
            # Their claims stay 'extracting'; the journal returns them to queued at the next start.
            log.warning("shutdown_timeout", workers=busy)
        if self.pipeline is not None:
            self.pipeline.graph.close()
        if self.journal is not None and not busy:
            self.journal.close()
        log.info("daemon_stopped")

    # -- parts

    def _admit_loop(self) -> None:
        """Admit each stable file the inbox hands out, then wake a worker."""
        assert self.pipeline is not None and self.watcher is not None
        while not self.stop_event.is_set():
            self._retract_deleted()
            path = self.watcher.get(timeout=0.2)
            if path is None:
                continue
            try:
                with self.watcher.mover.handling(path):  # ends the claim if admit raises or the file is gone
                    self.pipeline.admit(path)
            except JournalError as exc:
                log.error("admitter_stopped", error=str(exc))
                raise
            except Exception:  # noqa: BLE001 - one odd file must not stop admission (or crash-loop us)
                log.exception("admit_failed", path=str(path))
                continue
            self.wake.set()

    def _retract_deleted(self) -> None:
        assert self.pipeline is not None
        while True:
            try:
                sha256 = self.retractions.get_nowait()
            except queue.Empty:
                return
            where = "the vault" if self.settings.inbox.vault else "processed/"
            self.pipeline.retract(sha256, reason=f"file deleted from {where}")

    def _start_scheduler(self) -> Any:
        bench = self.settings.bench
        if not (bench.schedule or bench.interval_hours):
            return None
        try:
            from membrane.bench import BenchScheduler
        except ImportError:
            log.warning("bench_scheduler_unavailable", reason="membrane.bench is not installed")
            return None
        journal, inbox = self.journal, self.watcher
        assert journal is not None and inbox is not None
        scheduler = BenchScheduler(
            self.settings, journal, is_idle=lambda: journal.status.pending() == 0 and inbox.pending() == 0
        )
        scheduler.start()
        return scheduler

    def status_line(self) -> str:
        if self.journal is None:
            return "starting"
        counts = self.journal.status.counts()
        shown = ", ".join(f"{state} {counts[state]}" for state in _STATUS_LINE_STATES if counts[state])
        return f"{shown or 'idle'}; model {effective_champion(self.settings, self.journal)}"
