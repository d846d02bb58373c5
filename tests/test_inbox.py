"""The inbox: real watchdog observers (inotify and polling), stability, ignore rules, moves and their claims,
the ingest folder scan, and the deletion watch."""

from __future__ import annotations

import hashlib
import json
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from membrane.config import Settings
from membrane.inbox import DeletionWatch, FileMover, Inbox, InboxFolders, move_unique, sidecar_path

OBSERVERS = [pytest.param(False, id="inotify"), pytest.param(True, id="polling")]


@pytest.fixture
def start_inbox(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Inbox]]:
    """Start an Inbox with fast test timings; keyword args override [inbox] keys."""
    started: list[Inbox] = []

    def start(**overrides: object) -> Inbox:
        values: dict[str, object] = {"stable_seconds": 0.2, "poll_interval_s": 0.1, "rescan_interval_s": 3600}
        values.update(overrides)
        inbox = Inbox(make_settings(inbox=values).inbox, tick_s=0.05)
        inbox.start()
        started.append(inbox)
        return inbox

    yield start
    for inbox in started:
        inbox.stop()


def collect(inbox: Inbox, count: int, *, timeout: float = 10.0, settle: float = 0.6) -> list[Path]:
    """Take `count` ready paths (failing after `timeout`), then check nothing more arrives for `settle` s."""
    paths: list[Path] = []
    deadline = time.monotonic() + timeout
    while len(paths) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(paths)} of {count} files were handed out: {paths}"
        path = inbox.get(timeout=remaining)
        if path is not None:
            paths.append(path)
    extra = inbox.get(timeout=settle)
    assert extra is None, f"unexpected extra path handed out: {extra}"
    return paths


@pytest.mark.parametrize("polling", OBSERVERS)
def test_new_file_is_handed_out_once(start_inbox: Callable[..., Inbox], polling: bool) -> None:
    """A file written into the inbox is handed out exactly once by either observer."""
    inbox = start_inbox(polling=polling)
    (inbox.root / "note.txt").write_text("hello", encoding="utf-8")
    assert collect(inbox, 1) == [inbox.root / "note.txt"]


@pytest.mark.parametrize("polling", OBSERVERS)
def test_slow_write_is_never_handed_out_half_written(start_inbox: Callable[..., Inbox], polling: bool) -> None:
    """A file written in pieces with pauses shorter than stable_seconds is handed out only when complete."""
    inbox = start_inbox(polling=polling, stable_seconds=1.0)
    path = inbox.root / "slow.txt"
    pieces = [f"piece {i}\n" for i in range(12)]
    with open(path, "w", encoding="utf-8") as handle:
        for piece in pieces:
            handle.write(piece)
            handle.flush()
            assert inbox.get(timeout=0.12) is None, "handed out while still being written"
    assert collect(inbox, 1) == [path]
    assert path.read_text(encoding="utf-8") == "".join(pieces)


@pytest.mark.parametrize("polling", OBSERVERS)
def test_atomic_move_into_the_inbox(start_inbox: Callable[..., Inbox], tmp_path: Path, polling: bool) -> None:
    """A file written elsewhere (or as .part inside) and renamed in is handed out under its final name."""
    inbox = start_inbox(polling=polling)
    outside = tmp_path / "draft.txt"
    outside.write_text("from outside", encoding="utf-8")
    os.rename(outside, inbox.root / "moved.txt")
    partial = inbox.root / "upload.md.part"
    partial.write_text("# uploading", encoding="utf-8")
    time.sleep(0.3)
    os.rename(partial, inbox.root / "upload.md")
    assert sorted(p.name for p in collect(inbox, 2)) == ["moved.txt", "upload.md"]


@pytest.mark.parametrize("polling", OBSERVERS)
def test_hundred_files_copied_at_once_each_once(
    start_inbox: Callable[..., Inbox], tmp_path: Path, polling: bool
) -> None:
    """100 files copied into the inbox at once are each handed out exactly once."""
    source = tmp_path / "batch"
    source.mkdir()
    for i in range(100):
        (source / f"capture-{i:03d}.txt").write_text(f"capture number {i}", encoding="utf-8")
    inbox = start_inbox(polling=polling)
    for file in source.iterdir():
        shutil.copy(file, inbox.root / file.name)
    paths = collect(inbox, 100, timeout=30)
    assert len(set(paths)) == 100
    assert {p.name for p in paths} == {f.name for f in source.iterdir()}


def test_files_present_at_start_are_found(make_settings: Callable[..., Settings]) -> None:
    """Files already in the inbox when it starts are handed out by the start-up scan."""
    settings = make_settings(inbox={"stable_seconds": 0.1})
    settings.inbox.path.mkdir(parents=True)
    for name in ("a.txt", "b.md"):
        (settings.inbox.path / name).write_text("waiting", encoding="utf-8")
    with Inbox(settings.inbox, tick_s=0.05) as inbox:
        assert sorted(p.name for p in collect(inbox, 2)) == ["a.txt", "b.md"]


def test_rescan_finds_files_the_observer_missed(start_inbox: Callable[..., Inbox]) -> None:
    """With an observer too slow to notice, the periodic rescan still finds a new file."""
    inbox = start_inbox(polling=True, poll_interval_s=3600, rescan_interval_s=0.5)
    time.sleep(0.2)  # the polling observer has taken its first snapshot
    (inbox.root / "missed.txt").write_text("the observer never polls again", encoding="utf-8")
    assert collect(inbox, 1, timeout=5) == [inbox.root / "missed.txt"]


def test_ignore_rules(start_inbox: Callable[..., Inbox]) -> None:
    """Dotfiles, temporary names, processed/, failed/ and sub-folders (not recursive) are never handed out."""
    inbox = start_inbox()
    ignored = [".hidden.txt", "draft.txt.tmp", "big.txt.part", ".note.md.swp", "note.md~"]
    for name in ignored:
        (inbox.root / name).write_text("ignore me", encoding="utf-8")
    (inbox.processed_dir / "old.txt").write_text("done before", encoding="utf-8")
    (inbox.failed_dir / "bad.txt").write_text("failed before", encoding="utf-8")
    (inbox.root / "sub").mkdir()
    (inbox.root / "sub" / "nested.txt").write_text("not recursive", encoding="utf-8")
    (inbox.root / "real.txt").write_text("take me", encoding="utf-8")
    assert collect(inbox, 1) == [inbox.root / "real.txt"]
    assert inbox.scan() == 0


def test_recursive_inbox_takes_nested_files_and_moved_in_folders(
    start_inbox: Callable[..., Inbox], tmp_path: Path
) -> None:
    """With recursion, files in sub-folders and in a folder moved in whole are handed out."""
    inbox = start_inbox(recursive=True)
    (inbox.root / "sub").mkdir()
    (inbox.root / "sub" / "nested.txt").write_text("nested", encoding="utf-8")
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "one.md").write_text("one", encoding="utf-8")
    (folder / "two.md").write_text("two", encoding="utf-8")
    os.rename(folder, inbox.root / "project")
    (inbox.processed_dir / "never.txt").write_text("processed is ignored", encoding="utf-8")
    paths = collect(inbox, 3)
    relative = sorted(str(p.relative_to(inbox.root)) for p in paths)
    assert relative == ["project/one.md", "project/two.md", "sub/nested.txt"]


@pytest.mark.parametrize("polling", OBSERVERS)
def test_dead_observer_is_restarted(start_inbox: Callable[..., Inbox], polling: bool) -> None:
    """When the observer thread dies it is restarted, and new files are handed out again."""
    inbox = start_inbox(polling=polling)
    observer = inbox._observer
    assert observer is not None
    observer.stop()
    observer.join(timeout=5)
    deadline = time.monotonic() + 5
    while inbox.observer_restarts == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert inbox.observer_restarts == 1 and inbox.observer_alive and inbox._observer is not observer
    (inbox.root / "after.txt").write_text("after the restart", encoding="utf-8")
    assert collect(inbox, 1) == [inbox.root / "after.txt"]


def test_file_deleted_before_it_is_stable_is_forgotten(start_inbox: Callable[..., Inbox]) -> None:
    """A file removed during its quiet period is never handed out."""
    inbox = start_inbox(stable_seconds=0.5)
    path = inbox.root / "brief.txt"
    path.write_text("here for a moment", encoding="utf-8")
    time.sleep(0.15)
    path.unlink()
    assert inbox.get(timeout=1.0) is None
    assert inbox.pending() == 0


def test_fifo_is_handed_out_so_it_can_fail(start_inbox: Callable[..., Inbox]) -> None:
    """A FIFO in the inbox is handed out (never opened) and moves to failed/ with a sidecar."""
    inbox = start_inbox()
    os.mkfifo(inbox.root / "pipe.txt")
    [path] = collect(inbox, 1)
    moved = inbox.mover.failed(path, reason="not a regular file (a FIFO)", stage="read")
    assert moved == inbox.failed_dir / "pipe.txt" and sidecar_path(moved).exists()
    assert not (inbox.root / "pipe.txt").exists()


def test_rewritten_after_hand_out_goes_back_to_the_tracker(start_inbox: Callable[..., Inbox]) -> None:
    """A file changed after it was handed out is reported as changed and handed out again when stable."""
    inbox = start_inbox()
    path = inbox.root / "edited.txt"
    path.write_text("first", encoding="utf-8")
    assert collect(inbox, 1, settle=0) == [path]
    assert inbox.unchanged(path)
    path.write_text("second, longer", encoding="utf-8")
    assert not inbox.unchanged(path)
    assert collect(inbox, 1) == [path]


def test_processed_names_never_overwrite(start_inbox: Callable[..., Inbox]) -> None:
    """Two captures with the same name both survive in processed/, the second with a suffix."""
    inbox = start_inbox()
    for content in ("first version", "second version"):
        path = inbox.root / "note.txt"
        path.write_text(content, encoding="utf-8")
        [ready] = collect(inbox, 1, settle=0)
        inbox.mover.done(ready)
    assert (inbox.processed_dir / "note.txt").read_text(encoding="utf-8") == "first version"
    assert (inbox.processed_dir / "note-1.txt").read_text(encoding="utf-8") == "second version"
    assert inbox.pending() == 0


def test_failed_file_gets_a_sidecar_and_never_overwrites(start_inbox: Callable[..., Inbox]) -> None:
    """FileMover.failed writes <name>.error.json with reason, stage, hint, model and time, never overwriting."""
    inbox = start_inbox()
    (inbox.failed_dir / "bad.txt.error.json").write_text("{}", encoding="utf-8")  # an orphan sidecar
    path = inbox.root / "bad.txt"
    path.write_bytes(b"\xff\xfe")
    [ready] = collect(inbox, 1)
    moved = inbox.mover.failed(
        ready, reason="not valid UTF-8: byte 0", stage="read", hint="Save as UTF-8.", model="embedded:smollm2-135m"
    )
    assert moved == inbox.failed_dir / "bad-1.txt"
    sidecar = json.loads(sidecar_path(moved).read_text(encoding="utf-8"))
    assert sidecar["reason"] == "not valid UTF-8: byte 0" and sidecar["stage"] == "read"
    assert sidecar["hint"] == "Save as UTF-8." and sidecar["model"] == "embedded:smollm2-135m"
    assert sidecar["original_path"] == str(path) and sidecar["time"].endswith("Z")
    assert (inbox.failed_dir / "bad.txt.error.json").read_text(encoding="utf-8") == "{}"


def test_on_success_delete_removes_the_file(start_inbox: Callable[..., Inbox]) -> None:
    """With on_success = "delete" a processed capture is deleted, not moved."""
    inbox = start_inbox(on_success="delete")
    (inbox.root / "gone.txt").write_text("delete me", encoding="utf-8")
    [ready] = collect(inbox, 1)
    assert inbox.mover.done(ready) is None
    assert not ready.exists() and list(inbox.processed_dir.iterdir()) == []


@pytest.mark.parametrize("name", ["line\nbreak.txt", "заметка.md", "笔记 2026.txt"])
def test_unusual_names_are_handed_out_and_moved(start_inbox: Callable[..., Inbox], name: str) -> None:
    """Names with newlines and non-Latin scripts are handed out and moved intact."""
    inbox = start_inbox()
    (inbox.root / name).write_text("text", encoding="utf-8")
    [ready] = collect(inbox, 1)
    assert ready.name == name
    assert inbox.mover.done(ready) == inbox.processed_dir / name


def test_move_across_filesystems_copies_and_never_overwrites(tmp_path: Path) -> None:
    """Moving to another filesystem (/dev/shm) copies, keeps existing files and removes the source."""
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a different filesystem from tmp_path")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as other:
        target = Path(other)
        (target / "note.txt").write_text("already there", encoding="utf-8")
        source = tmp_path / "note.txt"
        source.write_text("moved across", encoding="utf-8")
        moved = move_unique(source, target)
        assert moved == target / "note-1.txt" and moved.read_text(encoding="utf-8") == "moved across"
        assert (target / "note.txt").read_text(encoding="utf-8") == "already there"
        assert not source.exists()


def test_concurrent_moves_of_same_name_never_overwrite(tmp_path: Path) -> None:
    """Eight threads moving files of one name into one folder produce eight distinct files."""
    target = tmp_path / "processed"
    sources = []
    for i in range(8):
        folder = tmp_path / f"src{i}"
        folder.mkdir()
        (folder / "same.txt").write_text(f"content {i}", encoding="utf-8")
        sources.append(folder / "same.txt")
    results: list[Path] = []
    threads = [threading.Thread(target=lambda s=s: results.append(move_unique(s, target))) for s in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 8
    assert sorted(p.read_text(encoding="utf-8") for p in results) == [f"content {i}" for i in range(8)]


def test_move_unique_finishes_a_move_cut_short_between_link_and_unlink(tmp_path: Path) -> None:
    """A file already hard-linked into the folder by a move that a crash interrupted is not moved a second time
    under a numbered name: the move is finished (the inbox name unlinked) and the existing name returned."""
    inbox, processed = tmp_path / "inbox", tmp_path / "processed"
    inbox.mkdir()
    processed.mkdir()
    source = inbox / "note.txt"
    source.write_text("hello", encoding="utf-8")
    os.link(source, processed / "note.txt")  # the crash came after os.link, before os.unlink
    moved = move_unique(source, processed)
    assert moved == processed / "note.txt"
    assert not source.exists()
    assert sorted(p.name for p in processed.iterdir()) == ["note.txt"]


def test_move_unique_still_numbers_a_different_file_of_the_same_name(tmp_path: Path) -> None:
    """A different file already under the name still gets "-1", never overwritten."""
    inbox, processed = tmp_path / "inbox", tmp_path / "processed"
    inbox.mkdir()
    processed.mkdir()
    (processed / "note.txt").write_text("older", encoding="utf-8")
    source = inbox / "note.txt"
    source.write_text("newer", encoding="utf-8")
    assert move_unique(source, processed) == processed / "note-1.txt"
    assert (processed / "note.txt").read_text(encoding="utf-8") == "older"


# ---------------------------------------------------------------- the mover's claims


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _claimed_then_edited(inbox: Inbox, name: str) -> tuple[Path, str]:
    """Hand out a new file, then edit it; returns its path and the sha256 of the bytes handed out."""
    (inbox.root / name).write_text("as read", encoding="utf-8")
    [ready] = collect(inbox, 1)
    read = _sha(ready)
    ready.write_text("edited after reading", encoding="utf-8")
    return ready, read


def test_done_leaves_an_edited_file_in_place_and_ends_its_claim(start_inbox: Callable[..., Inbox]) -> None:
    """mover.done with the bytes read earlier leaves a file edited since in the inbox, unclaimed, for the next scan."""
    inbox = start_inbox()
    ready, read = _claimed_then_edited(inbox, "edited.txt")
    path = inbox.root / "edited.txt"
    assert inbox.mover.done(ready, read) is None
    assert path.read_text(encoding="utf-8") == "edited after reading"
    assert not inbox.mover.claimed(ready) and list(inbox.processed_dir.iterdir()) == []
    inbox.scan()
    assert collect(inbox, 1) == [path]


def test_failed_leaves_an_edited_file_in_place_and_ends_its_claim(start_inbox: Callable[..., Inbox]) -> None:
    """mover.failed with the bytes that failed moves nothing (no sidecar) when the file was edited since."""
    inbox = start_inbox()
    ready, failed = _claimed_then_edited(inbox, "retry.txt")
    assert inbox.mover.failed(ready, reason="test", stage="extract", sha256=failed) is None
    assert ready.exists() and list(inbox.failed_dir.iterdir()) == []
    assert not inbox.mover.claimed(ready)  # (the watcher may already see the edit as a new candidate)


def test_a_move_that_errors_still_ends_the_claim(start_inbox: Callable[..., Inbox]) -> None:
    """When processed/ cannot be created the file stays in the inbox, unclaimed, so a later scan hands it out again."""
    inbox = start_inbox()
    path = inbox.root / "stuck.txt"
    path.write_text("cannot move", encoding="utf-8")
    [ready] = collect(inbox, 1)
    inbox.processed_dir.rmdir()
    inbox.processed_dir.write_text("a file where the folder should be", encoding="utf-8")
    assert inbox.mover.done(ready, _sha(ready)) is None
    assert path.read_text(encoding="utf-8") == "cannot move"
    assert not inbox.mover.claimed(ready) and inbox.pending() == 0


def test_handling_ends_the_claim_only_when_admission_raises_or_the_file_is_gone(
    start_inbox: Callable[..., Inbox],
) -> None:
    """The admitter's block keeps a claim while its file waits in the journal and ends it on an error or a
    vanished file."""
    inbox = start_inbox()
    names = ("raises.txt", "vanishes.txt", "waits.txt")
    for name in names:
        (inbox.root / name).write_text(name, encoding="utf-8")
    ready = {path.name: path for path in collect(inbox, 3)}
    with pytest.raises(RuntimeError), inbox.mover.handling(ready["raises.txt"]):
        raise RuntimeError("an odd file")
    with inbox.mover.handling(ready["vanishes.txt"]) as path:
        path.unlink()
    with inbox.mover.handling(ready["waits.txt"]):
        pass
    assert [inbox.mover.claimed(ready[name]) for name in names] == [False, False, True]


def test_files_outside_the_inbox_are_never_moved(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """A file named on the command line outside the inbox stays where it is, whether done or failed."""
    mover = FileMover(make_settings().inbox)
    outside = tmp_path / "elsewhere" / "note.txt"
    outside.parent.mkdir()
    outside.write_text("mine", encoding="utf-8")
    assert mover.done(outside, _sha(outside)) is None
    assert mover.failed(outside, reason="test", stage="read") is None
    assert outside.read_text(encoding="utf-8") == "mine"
    assert not mover.processed_dir.exists() and not mover.failed_dir.exists()


# ---------------------------------------------------------------- the ingest folder scan


def _tree(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name, encoding="utf-8")


SCAN_TREE = [
    "a.txt",
    ".hidden.txt",
    "b.tmp",
    "c.part",
    "d.md~",
    "sub/e.txt",
    ".cache/f.txt",
    "processed/g.txt",
    "failed/h.txt",
]


@pytest.mark.parametrize("recursive", [False, True])
def test_ingest_scan_of_the_inbox_is_what_the_watcher_hands_out(
    start_inbox: Callable[..., Inbox], recursive: bool
) -> None:
    """Scanning the inbox for `membrane ingest` yields exactly the paths the watcher hands out (one set of rules)."""
    inbox = start_inbox(recursive=recursive)
    _tree(inbox.root, SCAN_TREE)
    expected = [inbox.root / "a.txt", *([inbox.root / "sub" / "e.txt"] if recursive else [])]
    assert inbox.folders.scan(inbox.root) == expected
    assert sorted(collect(inbox, len(expected))) == expected


def test_ingest_scan_of_another_folder_applies_the_name_rules_without_sub_folders(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A folder outside the inbox gives its own files minus ignored names, never its sub-folders' files."""
    folders = InboxFolders.of(make_settings(inbox={"recursive": True}).inbox)
    outside = tmp_path / "notes"
    _tree(outside, SCAN_TREE)
    assert folders.scan(outside) == [outside / "a.txt"]


# ---------------------------------------------------------------- the deletion watch


def test_deletion_watch_reports_a_deleted_processed_file_unless_a_copy_remains(
    start_inbox: Callable[..., Inbox],
) -> None:
    """A file the mover put in processed/ and then deleted queues its sha256, but not while a copy of its bytes
    remains."""
    inbox = start_inbox()
    retractions: queue.Queue[str] = queue.Queue()
    watch = DeletionWatch(inbox.mover, retractions)
    watch.start()
    try:
        for name in ("one.txt", "copy.txt"):
            (inbox.root / name).write_text("same bytes", encoding="utf-8")
        ready = sorted(collect(inbox, 2))
        digest = _sha(ready[0])
        moved = [inbox.mover.done(path, digest) for path in ready]
        assert all(path is not None and path.parent == inbox.processed_dir for path in moved)
        assert moved[0] is not None and moved[1] is not None
        moved[0].unlink()
        with pytest.raises(queue.Empty):
            retractions.get(timeout=1.0)
        moved[1].unlink()
        assert retractions.get(timeout=5.0) == digest
    finally:
        watch.stop()
    assert inbox.mover.on_processed is None


def test_deletion_watch_sees_a_file_deleted_before_the_mover_reported_it(
    start_inbox: Callable[..., Inbox],
) -> None:
    """A file deleted from processed/ between the mover's rename and its report (the deletion event found nothing
    to retract) is queued when the report comes."""
    inbox = start_inbox()
    retractions: queue.Queue[str] = queue.Queue()
    watch = DeletionWatch(inbox.mover, retractions)
    watch.start()
    try:
        watch.moved_in(inbox.processed_dir / "already-gone.txt", "ab" * 32)
        assert retractions.get(timeout=5.0) == "ab" * 32
    finally:
        watch.stop()
