"""The inbox: noticing capture files, deciding when they are ready, moving
them out (to processed/, failed/ with a sidecar, or deleting them), and
noticing processed files deleted (the deletion watch).

Owners: `InboxFolders` holds the folders and the one copy of the ignore rules
(the watcher, its rescans and `membrane ingest`'s folder scan use it);
`FileMover` owns the claims on handed-out paths and every move out of the
inbox; `Inbox` is the watcher and stability tracker; `DeletionWatch` maps
processed/ files to their captures and reports the ones deleted.

How a file becomes ready:
- a watchdog observer (inotify, or PollingObserver for network filesystems
  with inbox.polling) reports created, moved-in, modified and closed files;
  a scan at start and every inbox.rescan_interval_s catches anything missed;
- every such path becomes a *candidate*; a tracker thread stats candidates
  and hands a path out once its type, size, mtime and inode stayed the same
  for inbox.stable_seconds (paperless-ngx's FileStabilityTracker idea), so a
  half-written file is never read;
- a path handed out is *claimed* until FileMover.done, FileMover.failed or
  FileMover.release ends the claim, so no file is handed out twice; done and
  failed end it whatever happens to the file (moved, vanished, edited since,
  a move error), so the pipeline never releases a path itself;
- the tracker thread also checks the observer thread and restarts it (then
  rescans) if it died.

Non-regular entries (FIFOs, sockets, symlinks) are handed out too, so that
read_capture can refuse them and they reach failed/ with a reason; directories
are never handed out.

Ignored everywhere: names starting with "." (and anything under such a
folder), *.tmp, *.part, *.swp, *~, the processed and failed folders (even when
inside the inbox), and sub-folders unless inbox.recursive.

A vault (inbox.mode = "vault") is read in place: always recursively (dot
folders such as .obsidian/ and .trash/ ignored by the rule above), files of
other extensions are ignored rather than refused (a vault holds images and
canvases), nothing is moved or written (no processed/, failed/ or sidecar; a
refusal is in the journal, `membrane status`), and a file that was done or
refused is *settled*: it is not handed out again until its size, mtime or
inode change (an edit), so the periodic rescan does not re-read the vault.
The deletion watch then watches the vault itself.

Moves never overwrite: the destination is claimed with link() (atomic, fails
if the name exists), then the source is unlinked; a taken name gets a suffix
("note-1.txt"); a link left by a crash before the unlink is finished, not
repeated. Across filesystems (or where hard links are refused) the file
is copied to an exclusively created name, fsynced, then the source unlinked.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import queue
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from membrane.clock import iso_utc
from membrane.config import InboxSettings
from membrane.files import atomic_write, file_sha256, fsync_dir
from membrane.logs import get_logger

__all__ = [
    "IGNORED_PATTERNS",
    "DeletionWatch",
    "FileMover",
    "Inbox",
    "InboxFolders",
    "move_unique",
    "regular_file_sha256",
    "sidecar_path",
]

log = get_logger(__name__)

IGNORED_PATTERNS = (".*", "*.tmp", "*.part", "*.swp", "*~")
SIDECAR_SUFFIX = ".error.json"
# The longest file name most filesystems allow, in bytes.
NAME_MAX = 255
RESTART_INTERVAL_S = 1.0
# errno values meaning "hard links are not possible here": copy instead.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EACCES}


@dataclass(frozen=True)
class _Signature:
    kind: int  # S_IFMT bits: a regular file that becomes a FIFO is not stable
    size: int
    mtime_ns: int
    inode: int


def _signature(path: Path) -> _Signature | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return _Signature(stat.S_IFMT(info.st_mode), info.st_size, info.st_mtime_ns, info.st_ino)


def regular_file_sha256(path: Path) -> str:
    """The sha256 of a regular file's bytes ("" for anything else: never open a FIFO)."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        return ""
    return file_sha256(path)


def _ignored_name(parts: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(part, pattern) for part in parts for pattern in IGNORED_PATTERNS)


@dataclass(frozen=True)
class InboxFolders:
    """The inbox's folders and its ignore rules (see the module docstring): the one copy
    that the watcher, its rescans and `membrane ingest`'s folder scan all apply."""

    root: Path
    recursive: bool
    excluded: tuple[Path, ...] = ()  # processed/ and failed/, even when inside the inbox
    only: tuple[str, ...] = ()  # a vault: the extensions handed out (others are ignored, not refused)

    @classmethod
    def of(cls, settings: InboxSettings) -> InboxFolders:
        absolute = [Path(os.path.abspath(folder)) for folder in (settings.path, settings.processed, settings.failed)]
        if settings.vault:
            return cls(absolute[0], True, (), tuple(e.lower() for e in settings.extensions))
        return cls(absolute[0], settings.recursive, (absolute[1], absolute[2]))

    def is_ignored(self, path: Path) -> bool:
        """True for paths never handed out."""
        path = Path(os.path.abspath(path))
        if any(path == folder or path.is_relative_to(folder) for folder in self.excluded):
            return True
        if not path.is_relative_to(self.root) or path == self.root:
            return True
        parts = path.relative_to(self.root).parts
        if len(parts) > 1 and not self.recursive:
            return True
        if self.only and path.suffix.lower() not in self.only and not path.is_dir():
            return True
        return _ignored_name(parts)

    def walk(self, folder: Path) -> Iterator[Path]:
        """Every path under `folder` that is not ignored and not a directory."""
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            log.warning("inbox_scan_failed", path=str(folder), error=exc.strerror)
            return
        for entry in entries:
            path = Path(entry.path)
            if self.is_ignored(path):
                continue
            if entry.is_dir(follow_symlinks=False):
                if self.recursive:
                    yield from self.walk(path)
                continue
            yield path

    def scan(self, folder: Path) -> list[Path]:
        """The captures in a folder named to `membrane ingest`, sorted: inside the inbox what
        the watcher would hand out; elsewhere the folder's own files under the same name rules
        (its sub-folders, like an inbox's without inbox.recursive, are not read)."""
        absolute = Path(os.path.abspath(folder))
        inside = absolute == self.root or absolute.is_relative_to(self.root)
        rules = self if inside else InboxFolders(absolute, recursive=False)
        return sorted(rules.walk(absolute))


class FileMover:
    """Owns the claims on handed-out paths and every move out of the inbox.

    The rule: a path claimed (handed out by the Inbox) stays claimed until done(),
    failed() or release(); done and failed end the claim whatever happens to the
    file, so no caller releases a path after them. Files outside the inbox (named
    on the command line) are never moved. Call done and failed only after the
    journal committed what the move would lose; a move cut short by a crash is
    finished on the next call, not repeated (move_unique).
    """

    def __init__(self, settings: InboxSettings) -> None:
        self.settings = settings
        self.folders = InboxFolders.of(settings)
        self.root = self.folders.root
        self.processed_dir = Path(os.path.abspath(settings.processed))
        self.failed_dir = Path(os.path.abspath(settings.failed))
        # Shared with the Inbox (re-entrant for its calls here): a path is a candidate
        # or claimed, never both, so it is never handed out twice.
        self.lock = threading.RLock()
        self._claims: dict[Path, _Signature | None] = {}
        # One move at a time: two threads moving one file could leave a copy under a second name.
        self._moving = threading.Lock()
        # Called with (new path, sha256) after a file moved to processed/, or in a vault was
        # done in place (the deletion watch).
        self.on_processed: Callable[[Path, str], None] | None = None
        self.vault = settings.vault
        # A vault's files done or refused, as they were then: not handed out again unchanged.
        self._settled: dict[Path, _Signature] = {}

    # -- claims

    def claim(self, path: Path, signature: _Signature | None) -> None:
        """Mark a path handed out, as it was when handed out."""
        with self.lock:
            self._claims[Path(path)] = signature

    def claimed(self, path: Path) -> bool:
        """True while a path handed out waits for done, failed or release."""
        with self.lock:
            return Path(path) in self._claims

    def claimed_as(self, path: Path) -> _Signature | None:
        """The signature a claimed path had when handed out (None when not claimed)."""
        with self.lock:
            return self._claims.get(Path(path))

    def claims(self) -> int:
        """How many paths are claimed now."""
        with self.lock:
            return len(self._claims)

    def release(self, path: Path) -> None:
        """End a claim without moving the file (it vanished, or it was dealt with another way)."""
        with self.lock:
            self._claims.pop(Path(path), None)

    def settled(self, path: Path) -> bool:
        """A vault's file done or refused and unchanged since: not to be handed out again."""
        with self.lock:
            known = self._settled.get(Path(path))
        return known is not None and known == _signature(path)

    def _settle(self, path: Path, sha256: str | None) -> None:
        """Remember a vault's file as it was when handed out (or as it is, when it still
        holds `sha256` and was not handed out: another path of the same capture)."""
        with self.lock:
            signature = self._claims.get(path)
            if signature is None and sha256 is not None and self._holds(path, sha256):
                signature = _signature(path)
            if signature is not None:
                self._settled[path] = signature

    @contextmanager
    def handling(self, path: Path) -> Iterator[Path]:
        """Admit a claimed path inside this block: if the block raises, or the file is gone
        when it ends, the claim ends too (a new file under the name must be handed out)."""
        try:
            yield path
        except BaseException:
            self.release(path)
            raise
        if not os.path.lexists(path):
            self.release(path)

    # -- where files are

    def locate(self, name: str) -> Path:
        """The file for a capture path: relative ones are in the inbox, absolute ones anywhere."""
        return self.root / name

    def inside(self, path: Path) -> bool:
        """True for a file in the inbox, the only files ever moved."""
        absolute = Path(os.path.abspath(path))
        return absolute != self.root and absolute.is_relative_to(self.root)

    # -- moving files out

    def done(self, path: Path, sha256: str | None = None) -> Path | None:
        """Move a processed file to processed/ (or delete it, inbox.on_success) if it still
        holds `sha256` (None: whatever it holds); ends its claim. Returns the new path, or
        None when not moved (deleted, gone, edited since: a new capture, or a move error)."""
        path = Path(path)
        if not self.inside(path):
            return None
        if self.vault:  # read in place: never moved
            self._settle(path, sha256)
            self.release(path)
            if sha256 is not None and self.on_processed is not None and self._holds(path, sha256):
                self.on_processed(path, sha256)
            return None
        try:
            with self._moving:
                moved = self._done(path, sha256)
        except OSError as exc:
            log.error("capture_move_failed", path=str(path), error=str(exc))
            return None
        finally:
            self.release(path)
        if moved is not None and sha256 is not None and self.on_processed is not None:
            self.on_processed(moved, sha256)
        return moved

    def _done(self, path: Path, sha256: str | None) -> Path | None:
        if not self._holds(path, sha256):
            return None
        if self.settings.on_success == "delete":
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)
            log.info("capture_file_deleted", path=str(path))
            return None
        return self._move(path, self.processed_dir, sidecar=False)

    def failed(
        self,
        path: Path,
        *,
        reason: str,
        stage: str,
        hint: str = "",
        model: str | None = None,
        sha256: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Move a file to failed/ with `<name>.error.json` beside it if it still holds `sha256`
        (None: whatever it holds); ends its claim. Returns the new path, or None when not
        moved (the sidecar is not written then)."""
        path = Path(path)
        if not self.inside(path):
            return None
        if self.vault:  # never written to: the reason is in the journal (`membrane status`)
            self._settle(path, sha256)
            self.release(path)
            log.warning("capture_file_failed", path=str(path), stage=stage, reason=reason)
            return None
        record = {
            "reason": reason,
            "stage": stage,
            "hint": hint,
            "model": model,
            "sha256": sha256,
            **dict(details or {}),
        }
        try:
            with self._moving:
                return self._failed(path, sha256, record)
        except OSError as exc:
            log.error("capture_move_failed", path=str(path), error=str(exc))
            return None
        finally:
            self.release(path)

    def _failed(self, path: Path, sha256: str | None, record: Mapping[str, Any]) -> Path | None:
        if not self._holds(path, sha256):
            return None
        moved = self._move(path, self.failed_dir, sidecar=True)
        if moved is not None:
            sidecar = {"file": _text(moved.name), "original_path": _text(str(path)), "time": iso_utc(), **record}
            _write_json_atomic(sidecar_path(moved), sidecar)
            log.warning(
                "capture_file_failed",
                path=str(path),
                moved_to=str(moved),
                stage=record["stage"],
                reason=record["reason"],
            )
        return moved

    @staticmethod
    def _holds(path: Path, sha256: str | None) -> bool:
        """False when the file is gone, or was edited since it was read (the new bytes are a
        new capture: it waits for the next scan)."""
        if sha256 is None:
            return os.path.lexists(path)
        try:
            return regular_file_sha256(path) == sha256
        except FileNotFoundError:
            return False

    def _move(self, path: Path, folder: Path, *, sidecar: bool) -> Path | None:
        absolute = Path(os.path.abspath(path))
        # Keep sub-folders of a recursive inbox; anything else lands flat in the folder.
        relative = absolute.relative_to(self.root).parent if absolute.is_relative_to(self.root) else Path()
        try:
            moved = move_unique(absolute, folder / relative, reserve_sidecar=sidecar)
        except FileNotFoundError:
            log.info("capture_file_vanished", path=str(path))
            return None
        log.info("capture_file_moved", path=str(path), moved_to=str(moved))
        return moved


class _Handler(FileSystemEventHandler):
    """Forwards watchdog events to the inbox; runs on the observer thread."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def on_created(self, event: FileSystemEvent) -> None:
        self.inbox._notice(event.src_path, event.is_directory)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self.inbox._notice(event.src_path, False)

    def on_closed(self, event: FileSystemEvent) -> None:
        self.inbox._notice(event.src_path, False)

    def on_moved(self, event: FileSystemEvent) -> None:
        # Only the destination matters: a file renamed into (or within) the inbox.
        self.inbox._notice(event.dest_path, event.is_directory)


class Inbox:
    """Watches the inbox folder and hands out paths of files ready to be read.

    Usage (the worker)::

        with Inbox(settings.inbox) as inbox:
            while running:
                path = inbox.get(timeout=1.0)
                if path is None:
                    continue
                with inbox.mover.handling(path):
                    ... read_capture(path, settings.inbox), journal work ...
                inbox.mover.done(path, sha256)   # or mover.failed(...), or mover.release(path)

    Every path handed out by get() is claimed in `self.mover` until done,
    failed or release ends the claim, or it is never handed out again.
    """

    def __init__(
        self,
        settings: InboxSettings,
        *,
        tick_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.mover = FileMover(settings)
        self.folders = self.mover.folders
        self.root, self.processed_dir, self.failed_dir = (
            self.mover.root,
            self.mover.processed_dir,
            self.mover.failed_dir,
        )
        self._tick_s = tick_s if tick_s is not None else min(0.5, max(0.05, settings.stable_seconds / 4))
        self._clock = clock
        self._lock = self.mover.lock  # one lock for candidates and claims
        self._candidates: dict[Path, tuple[_Signature | None, float]] = {}
        self._dirs_to_scan: set[Path] = set()
        self._ready: queue.Queue[Path] = queue.Queue()
        self._stop = threading.Event()
        self._observer: BaseObserver | None = None
        self._tracker: threading.Thread | None = None
        self._next_rescan = 0.0
        self._next_restart = 0.0
        self.observer_restarts = 0

    # -- life cycle

    def start(self) -> None:
        """Create the folders (a vault's own only), start the observer and the tracker, and scan once."""
        for folder in (self.root,) if self.settings.vault else (self.root, self.processed_dir, self.failed_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._stop.clear()
        self._start_observer()
        self.scan()
        self._next_rescan = self._clock() + self.settings.rescan_interval_s
        self._tracker = threading.Thread(target=self._track, name="membrane-inbox-tracker", daemon=True)
        self._tracker.start()
        log.info("inbox_started", path=str(self.root), polling=self.settings.polling, recursive=self.settings.recursive)

    def stop(self) -> None:
        """Stop the observer and the tracker; paths already handed out stay valid."""
        self._stop.set()
        if self._tracker is not None:
            self._tracker.join(timeout=10)
        self._stop_observer()
        log.info("inbox_stopped", path=str(self.root))

    def __enter__(self) -> Inbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def alive(self) -> bool:
        """True while the tracker thread runs (it keeps the observer alive itself)."""
        return self._tracker is not None and self._tracker.is_alive() and not self._stop.is_set()

    @property
    def observer_alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def _start_observer(self) -> None:
        if not self.settings.polling:
            try:
                self._observer = self._launch(Observer())
                return
            except OSError as exc:  # inotify watch or instance limits reached: polling still works
                log.warning("inbox_inotify_unavailable", error=str(exc), fallback="polling")
        self._observer = self._launch(PollingObserver(timeout=self.settings.poll_interval_s))

    def _launch(self, observer: BaseObserver) -> BaseObserver:
        observer.schedule(_Handler(self), str(self.root), recursive=self.folders.recursive)
        observer.daemon = True
        observer.start()
        return observer

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is None:
            return
        try:
            observer.stop()
            observer.join(timeout=10)
        except Exception as exc:  # a dead observer may fail to stop; we replace it anyway
            log.debug("inbox_observer_stop_failed", error=str(exc))

    def _restart_observer(self) -> None:
        self._stop_observer()
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_observer()
        self.observer_restarts += 1
        log.warning("inbox_observer_restarted", path=str(self.root), restarts=self.observer_restarts)
        self.scan()  # events that arrived while no observer ran are lost

    # -- handing out paths

    def get(self, timeout: float | None = None) -> Path | None:
        """The next ready path, waiting up to `timeout` seconds (None: forever); None if none."""
        try:
            return self._ready.get(timeout=timeout)
        except queue.Empty:
            return None

    def ready_paths(self) -> Iterator[Path]:
        """Every path ready now, without waiting."""
        while (path := self.get(timeout=0)) is not None:
            yield path

    def pending(self) -> int:
        """Files noticed but not yet handed out or released: zero means the inbox is idle."""
        with self._lock:
            return len(self._candidates) + self.mover.claims()

    def unchanged(self, path: Path) -> bool:
        """True if `path` is as it was when handed out. If it changed since (rewritten while
        waiting in the queue), it goes back to the stability tracker and False is returned."""
        with self._lock:
            expected = self.mover.claimed_as(path)
            current = _signature(path)
            if current is not None and current == expected:
                return True
            self.mover.release(path)
            if current is not None:
                self._candidates[path] = (None, self._clock())
        return False

    # -- noticing files

    def is_ignored(self, path: Path) -> bool:
        """True for paths the inbox never hands out (see the module docstring)."""
        return self.folders.is_ignored(path)

    def _notice(self, raw: str | bytes, is_directory: bool) -> None:
        path = Path(os.path.abspath(os.fsdecode(raw)))
        if self.is_ignored(path):
            return
        with self._lock:
            if is_directory:
                if self.folders.recursive:
                    self._dirs_to_scan.add(path)  # files moved in with a folder bring no events
                return
            if not self.mover.claimed(path) and not self.mover.settled(path):
                self._candidates[path] = (None, self._clock())

    def scan(self) -> int:
        """Make every file in the inbox a candidate (start-up and periodic rescan); returns how many."""
        found = 0
        for path in self.folders.walk(self.root):
            with self._lock:
                if not self.mover.claimed(path) and path not in self._candidates and not self.mover.settled(path):
                    self._candidates[path] = (None, self._clock())
                    found += 1
        if found:
            log.info("inbox_scan_found", path=str(self.root), files=found)
        return found

    # -- the tracker thread

    def _track(self) -> None:
        while not self._stop.wait(self._tick_s):
            try:
                self._tick()
            except Exception as exc:  # the tracker must outlive any one bad tick
                log.exception("inbox_tick_failed", error=str(exc))

    def _tick(self) -> None:
        now = self._clock()
        if not self.observer_alive and not self._stop.is_set() and now >= self._next_restart:
            # Throttled, so a restart that keeps failing does not flood the log.
            self._next_restart = now + RESTART_INTERVAL_S
            try:
                self._restart_observer()
            except Exception as exc:  # the rescans below still find files meanwhile
                log.error("inbox_observer_restart_failed", path=str(self.root), error=str(exc))
        if now >= self._next_rescan:
            self._next_rescan = now + self.settings.rescan_interval_s
            self.scan()
        with self._lock:
            folders, self._dirs_to_scan = self._dirs_to_scan, set()
        for folder in folders:
            for path in self.folders.walk(folder):
                self._notice(str(path), False)
        self._check_candidates(now)

    def _check_candidates(self, now: float) -> None:
        with self._lock:
            candidates = list(self._candidates.items())
        for path, (previous, since) in candidates:
            current = _signature(path)
            with self._lock:
                if path not in self._candidates:
                    continue
                if current is None:  # gone (moved away, deleted): nothing to do
                    del self._candidates[path]
                    continue
                if stat.S_ISDIR(current.kind):
                    del self._candidates[path]
                    if self.folders.recursive:
                        self._dirs_to_scan.add(path)
                    continue
                if current != previous:
                    self._candidates[path] = (current, now)
                    since = now
                if now - since < self.settings.stable_seconds:
                    continue
                del self._candidates[path]
                self.mover.claim(path, current)
            self._ready.put(path)
            log.debug("inbox_file_ready", path=str(path))


# ---------------------------------------------------------------- deletion


class DeletionWatch:
    """graph.on_capture_deleted = "retract": a file deleted from processed/ (or moved
    out of it) while the daemon runs puts its capture's sha256 on `retractions`,
    unless another file in processed/ holds the same bytes. In a vault the watch
    is on the vault itself, and its index is filled as notes are done in place
    (nothing is hashed at start-up: the start-up scan reads every note anyway).

    Deleting a capture means deleting its file from processed/: that is where
    every capture's file ends up (with inbox.on_success = "move"). Only
    deletions seen as they happen count; a file missing at start-up is not
    taken as deleted (processed/ may be on a disk that is not mounted yet).
    The retraction itself is the caller's (the daemon's admitter thread).
    """

    def __init__(self, mover: FileMover, retractions: queue.Queue[str]) -> None:
        self.mover = mover
        self.folder = mover.root if mover.vault else mover.processed_dir
        self.retractions = retractions
        self._lock = threading.Lock()
        self._index: dict[Path, str] = {}
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        """Index processed/ as it is, learn of every file moved in, and watch for deletions."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in () if self.mover.vault else self.folder.rglob("*"):
            if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
                with contextlib.suppress(OSError):
                    self._index[path] = regular_file_sha256(path)
        self.mover.on_processed = self.moved_in
        observer = Observer()
        observer.schedule(_DeletionHandler(self), str(self.folder), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        self.mover.on_processed = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def moved_in(self, path: Path, sha256: str) -> None:
        path = Path(os.path.abspath(path))
        with self._lock:
            self._index[path] = sha256
        # Deleted between the mover's rename and this call: its event found no
        # index entry and was ignored, so the deletion is seen here.
        if not path.exists():
            self.gone(path)

    def gone(self, path: Path) -> None:
        """A file left processed/: queue its capture for retraction if no copy remains."""
        with self._lock:
            sha256 = self._index.pop(Path(os.path.abspath(path)), None)
            if sha256 is None or sha256 in self._index.values():
                return
        log.info("processed_file_deleted", path=str(path), sha256=sha256)
        self.retractions.put(sha256)

    def renamed(self, source: Path, target: Path) -> None:
        target = Path(os.path.abspath(target))
        # Moved out, or (in a vault) into an ignored place such as .trash/: deleted.
        if not target.is_relative_to(self.folder) or (self.mover.vault and self.mover.folders.is_ignored(target)):
            self.gone(source)
            return
        with self._lock:
            sha256 = self._index.pop(Path(os.path.abspath(source)), None)
            if sha256 is not None:
                self._index[target] = sha256

    def gone_folder(self, folder: Path) -> None:
        """A folder deleted or moved away: every file indexed under it is gone."""
        folder = Path(os.path.abspath(folder))
        with self._lock:
            under = [path for path in self._index if path.is_relative_to(folder)]
        for path in under:
            self.gone(path)

    def renamed_folder(self, source: Path, target: Path) -> None:
        source, target = Path(os.path.abspath(source)), Path(os.path.abspath(target))
        with self._lock:
            under = [path for path in self._index if path.is_relative_to(source)]
        for path in under:
            self.renamed(path, target / path.relative_to(source))


class _DeletionHandler(FileSystemEventHandler):
    """Runs on the observer thread: only bookkeeping, the retraction happens elsewhere."""

    def __init__(self, watch: DeletionWatch) -> None:
        self.watch = watch

    def on_deleted(self, event: FileSystemEvent) -> None:
        path = Path(os.fsdecode(event.src_path))
        if event.is_directory:
            self.watch.gone_folder(path)
        else:
            self.watch.gone(path)

    def on_moved(self, event: FileSystemEvent) -> None:
        source, target = Path(os.fsdecode(event.src_path)), Path(os.fsdecode(event.dest_path))
        if event.is_directory:
            self.watch.renamed_folder(source, target)
        else:
            self.watch.renamed(source, target)


# ---------------------------------------------------------------- moves


def sidecar_path(path: Path) -> Path:
    """`failed/note.txt` -> `failed/note.txt.error.json`."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _text(name: str) -> str:
    """A name as storable text: undecodable bytes as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _fit(stem: str, suffix: str, max_bytes: int) -> str:
    """stem + suffix in at most max_bytes, the stem cut at a character boundary."""
    while stem and len(os.fsencode(stem + suffix)) > max_bytes:
        stem = stem[:-1]
    return stem + suffix


def _names(name: str, max_bytes: int = NAME_MAX) -> Iterator[str]:
    """`name`, then "-1", "-2", ... before the extension; each cut to max_bytes."""
    stem, suffix = os.path.splitext(name)
    if not stem:  # ".txt": no stem to number
        stem, suffix = name, ""
    if len(os.fsencode(suffix)) > max_bytes // 2:  # a "suffix" that is most of the name
        stem, suffix = name, ""
    yield _fit(stem, suffix, max_bytes)
    n = 1
    while True:
        yield _fit(stem, f"-{n}{suffix}", max_bytes)
        n += 1


def move_unique(source: Path, folder: Path, *, reserve_sidecar: bool = False) -> Path:
    """Move `source` into `folder` without overwriting anything; returns the new path.

    A taken name gets "-1", "-2", ... before the extension. With
    reserve_sidecar, a name whose `.error.json` exists is taken too, and names
    are cut short enough for the sidecar's name to fit NAME_MAX. Raises
    FileNotFoundError if the source is gone.
    """
    folder.mkdir(parents=True, exist_ok=True)
    os.lstat(source)  # FileNotFoundError before any name is chosen
    room = NAME_MAX - (len(SIDECAR_SUFFIX) if reserve_sidecar else 0)
    for name in _names(source.name, room):
        target = folder / name
        if reserve_sidecar and os.path.lexists(sidecar_path(target)):
            continue
        try:
            os.link(source, target, follow_symlinks=False)
        except FileExistsError:
            if _same_file(source, target):  # linked before a crash, never unlinked: finish that move
                break
            continue
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            if not _copy_exclusive(source, target):
                continue
        break
    os.unlink(source)
    fsync_dir(folder)
    fsync_dir(source.parent)
    return target


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _copy_exclusive(source: Path, target: Path) -> bool:
    """Copy to a new file at `target` (False if the name is taken), fsynced."""
    info = os.lstat(source)
    try:
        if stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(source), target)
            return True
        if not stat.S_ISREG(info.st_mode):
            # A FIFO or device cannot be copied; the sidecar records what it was.
            return True
        with open(source, "rb") as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst)
            dst.flush()
            os.fsync(dst.fileno())
        shutil.copystat(source, target)
        return True
    except FileExistsError:
        return False


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_write(path) as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2, default=str)
        handle.write("\n")
