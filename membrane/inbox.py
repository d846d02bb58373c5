"""The inbox: noticing capture files, deciding when they are ready, and moving
them out (to processed/, failed/ with a sidecar, or deleting them).

How a file becomes ready:
- a watchdog observer (inotify, or PollingObserver for network filesystems
  with inbox.polling) reports created, moved-in, modified and closed files;
  a scan at start and every inbox.rescan_interval_s catches anything missed;
- every such path becomes a *candidate*; a tracker thread stats candidates
  and hands a path out once its type, size, mtime and inode stayed the same
  for inbox.stable_seconds (paperless-ngx's FileStabilityTracker idea), so a
  half-written file is never read;
- a path handed out is in the *queued* set until the worker releases it
  (move_to_processed, move_to_failed, delete or release), so no file is handed
  out twice;
- the tracker thread also checks the observer thread and restarts it (then
  rescans) if it died.

Non-regular entries (FIFOs, sockets, symlinks) are handed out too, so that
read_capture can refuse them and they reach failed/ with a reason; directories
are never handed out.

Ignored everywhere: names starting with "." (and anything under such a
folder), *.tmp, *.part, *.swp, *~, the processed and failed folders (even when
inside the inbox), and sub-folders unless inbox.recursive.

Moves never overwrite: the destination is claimed with link() (atomic, fails
if the name exists), then the source is unlinked; a taken name gets a suffix
("note-1.txt"). Across filesystems (or where hard links are refused) the file
is copied to an exclusively created name, fsynced, then the source unlinked.
"""

from __future__ import annotations

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from membrane.config import InboxSettings
from membrane.journal import iso_utc
from membrane.logs import get_logger

__all__ = ["IGNORED_PATTERNS", "Inbox", "move_unique", "sidecar_path"]

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
                ... read_capture(path, settings.inbox), journal work ...
                inbox.move_to_processed(path)   # or move_to_failed(...), or release(path)

    Every path handed out by get() must end in move_to_processed,
    move_to_failed or release, or it is never handed out again.
    """

    def __init__(
        self,
        settings: InboxSettings,
        *,
        tick_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        before_move: Callable[[], None] | None = None,
    ) -> None:
        """`before_move` runs before any file leaves the inbox: pass journal.sync so that
        the commit the move depends on is durable first."""
        self.settings = settings
        self._before_move = before_move
        self.root = Path(os.path.abspath(settings.path))
        self.processed_dir = Path(os.path.abspath(settings.processed))
        self.failed_dir = Path(os.path.abspath(settings.failed))
        self._tick_s = tick_s if tick_s is not None else min(0.5, max(0.05, settings.stable_seconds / 4))
        self._clock = clock
        self._lock = threading.Lock()
        self._candidates: dict[Path, tuple[_Signature | None, float]] = {}
        self._queued: dict[Path, _Signature | None] = {}
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
        """Create the folders, start the observer and the tracker, and scan once."""
        for folder in (self.root, self.processed_dir, self.failed_dir):
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
        observer.schedule(_Handler(self), str(self.root), recursive=self.settings.recursive)
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
            return len(self._candidates) + len(self._queued)

    def unchanged(self, path: Path) -> bool:
        """True if `path` is as it was when handed out. If it changed since (rewritten while
        waiting in the queue), it goes back to the stability tracker and False is returned."""
        with self._lock:
            expected = self._queued.get(path)
            current = _signature(path)
            if current is not None and current == expected:
                return True
            self._queued.pop(path, None)
            if current is not None:
                self._candidates[path] = (None, self._clock())
        return False

    def release(self, path: Path) -> None:
        """Forget a handed-out path (it vanished, or the worker dealt with it another way)."""
        with self._lock:
            self._queued.pop(Path(path), None)

    # -- noticing files

    def is_ignored(self, path: Path) -> bool:
        """True for paths the inbox never hands out (see the module docstring)."""
        path = Path(os.path.abspath(path))
        for folder in (self.processed_dir, self.failed_dir):
            if path == folder or path.is_relative_to(folder):
                return True
        if not path.is_relative_to(self.root) or path == self.root:
            return True
        parts = path.relative_to(self.root).parts
        if len(parts) > 1 and not self.settings.recursive:
            return True
        return any(fnmatch.fnmatchcase(part, pattern) for part in parts for pattern in IGNORED_PATTERNS)

    def _notice(self, raw: str | bytes, is_directory: bool) -> None:
        path = Path(os.path.abspath(os.fsdecode(raw)))
        if self.is_ignored(path):
            return
        with self._lock:
            if is_directory:
                if self.settings.recursive:
                    self._dirs_to_scan.add(path)  # files moved in with a folder bring no events
                return
            if path not in self._queued:
                self._candidates[path] = (None, self._clock())

    def scan(self) -> int:
        """Make every file in the inbox a candidate (start-up and periodic rescan); returns how many."""
        found = 0
        for path in self._walk(self.root):
            with self._lock:
                if path not in self._queued and path not in self._candidates:
                    self._candidates[path] = (None, self._clock())
                    found += 1
        if found:
            log.info("inbox_scan_found", path=str(self.root), files=found)
        return found

    def _walk(self, folder: Path) -> Iterator[Path]:
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
                if self.settings.recursive:
                    yield from self._walk(path)
                continue
            yield path

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
            for path in self._walk(folder):
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
                    if self.settings.recursive:
                        self._dirs_to_scan.add(path)
                    continue
                if current != previous:
                    self._candidates[path] = (current, now)
                    since = now
                if now - since < self.settings.stable_seconds:
                    continue
                del self._candidates[path]
                self._queued[path] = current
            self._ready.put(path)
            log.debug("inbox_file_ready", path=str(path))

    # -- moving files out

    def move_to_processed(self, path: Path) -> Path | None:
        """After the journal commit: move the file to processed/ (or delete it, inbox.on_success).

        Returns the new path, or None when deleted or already gone.
        """
        path = Path(path)
        try:
            self._barrier()
            if self.settings.on_success == "delete":
                path.unlink(missing_ok=True)
                _fsync_dir(path.parent)
                log.info("capture_file_deleted", path=str(path))
                return None
            return self._move(path, self.processed_dir, sidecar=False)
        finally:
            self.release(path)

    def move_to_failed(
        self,
        path: Path,
        *,
        reason: str,
        stage: str,
        hint: str = "",
        model: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Path | None:
        """Move the file to failed/ with `<name>.error.json` beside it; returns the new path
        (None if the file was already gone; the sidecar is not written then)."""
        path = Path(path)
        try:
            self._barrier()
            moved = self._move(path, self.failed_dir, sidecar=True)
            if moved is not None:
                record = {
                    "file": _text(moved.name),
                    "original_path": _text(str(path)),
                    "reason": reason,
                    "stage": stage,
                    "hint": hint,
                    "model": model,
                    "time": iso_utc(),
                    **dict(details or {}),
                }
                _write_json_atomic(sidecar_path(moved), record)
                log.warning("capture_file_failed", path=str(path), moved_to=str(moved), stage=stage, reason=reason)
            return moved
        finally:
            self.release(path)

    def _barrier(self) -> None:
        if self._before_move is not None:
            self._before_move()

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
    _fsync_dir(folder)
    _fsync_dir(source.parent)
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
    # The temporary name starts with "." so that no inbox ever picks it up.
    # Not derived from the name: a long name plus this suffix would not fit NAME_MAX.
    temporary = path.with_name(f".membrane-{os.getpid()}-{threading.get_ident()}.tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, indent=2, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; not every filesystem supports it."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
