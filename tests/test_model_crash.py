"""A model that crashes in native code never takes the daemon down: with the real SmolLM2 in its
child process and a real SIGSEGV there on every call for one capture, the daemon keeps
running, the other captures are done, and the crashing one ends in failed/ with the crash."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from membrane.backends.embedded import close_models
from membrane.backends.embedded_child import FAULT_ENV
from membrane.config import Settings
from membrane.daemon import Daemon, Notifier
from membrane.journal import CaptureState, Journal
from tests.support.pipeline import wait_for

pytestmark = [pytest.mark.model, pytest.mark.slow]

TRIGGER = "KABOOM"


@pytest.fixture
def crashing_daemon(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path
) -> Iterator[tuple[Daemon, Settings]]:
    """A daemon on the embedded SmolLM2 whose child segfaults whenever a prompt holds TRIGGER."""
    monkeypatch.setenv(FAULT_ENV, f"segv:{TRIGGER}")
    settings = make_settings(
        model={"backend": "embedded", "name": "smollm2-135m", "num_predict": 128},
        extraction={"few_shot": False, "max_entities": 4, "max_relationships": 2, "max_repairs": 0},
        daemon={"retry_base_s": 0.05, "retry_max_s": 0.2, "idle_poll_s": 0.05, "max_model_crashes": 3},
    )
    settings.inbox.path.mkdir(parents=True)
    daemon = Daemon(settings, notifier=Notifier(""), install_signals=False)
    daemon.start()
    yield daemon, settings
    daemon.shutdown()
    close_models()


def test_crashing_capture_fails_with_the_crash_while_the_daemon_goes_on(
    crashing_daemon: tuple[Daemon, Settings],
) -> None:
    """The capture that segfaults the model is tried max_model_crashes times and lands in failed/ with
    SIGSEGV and the fix in its sidecar; the daemon stays healthy and the other captures are done."""
    daemon, settings = crashing_daemon
    inbox = settings.inbox.path
    notes = {
        "alice.txt": "Alice deployed Nextcloud on the Raspberry Pi.",
        "boom.txt": f"{TRIGGER}: Bob works at Initech.",
        "carol.txt": "Carol runs Postgres on db01.",
    }
    for name, text in notes.items():
        (inbox / name).write_text(text, encoding="utf-8")
    sidecar = settings.inbox.failed / "boom.txt.error.json"
    processed = settings.inbox.processed
    wait_for(
        lambda: sidecar.exists() and (processed / "alice.txt").exists() and (processed / "carol.txt").exists(),
        180,
        "two captures done and the crashing one failed",
    )
    assert daemon.healthy()
    failure = json.loads(sidecar.read_text(encoding="utf-8"))
    assert failure["stage"] == "extract" and failure["error"] == "ModelCrashed"
    assert "SIGSEGV" in failure["reason"] and "crash 3 of daemon.max_model_crashes = 3" in failure["reason"]
    assert "scripts/llama-wheel install" in failure["hint"]
    assert (settings.inbox.failed / "boom.txt").read_text(encoding="utf-8") == notes["boom.txt"]
    with Journal(settings.journal.path) as journal:
        counts = journal.status.counts()
        failed = journal.captures.in_states([CaptureState.FAILED])
    assert counts["done"] == 2 and counts["failed"] == 1
    assert failed[0].path == "boom.txt" and failed[0].attempts == 2  # two retries, then the third crash failed it
    # A capture arriving after the crashes is still extracted by a fresh child.
    (inbox / "dave.txt").write_text("Dave moved to Porto.", encoding="utf-8")
    wait_for(lambda: (processed / "dave.txt").exists(), 120, "a later capture done")
    assert daemon.healthy()
