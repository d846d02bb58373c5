"""daemon.concurrency keeps that many model calls in flight against a server backend:
llama.cpp's llama-server with two parallel slots, watched through its GET /slots."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import IN_CI

from membrane.config import Settings
from membrane.daemon import ingest
from membrane.journal import Journal
from tests.support.openai_servers import BusyWatch, LlamaServer, llama_server_binary

NOTES = [
    "Alice deployed the billing API on k3s.",
    "Bob moved Grafana to the Raspberry Pi.",
    "Chiara runs Jellyfin on the garage NAS.",
    "Dmitri maintains the Nextcloud instance at Acme Corp.",
]


@pytest.fixture
def llama_server(tiny_model_path: Path, tmp_path: Path) -> Iterator[LlamaServer]:
    """llama-server (scripts/llama-server build) serving SmolLM2 with two slots of 4,096 tokens."""
    binary = llama_server_binary()
    if binary is None:
        message = "no llama-server binary: run `scripts/llama-server build` (or set MEMBRANE_LLAMA_SERVER)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    server = LlamaServer(binary, tiny_model_path, "smollm2-135m", tmp_path / "llama-server.log", slots=2).start()
    yield server
    server.stop()


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.parametrize("concurrency", [1, 2])
def test_workers_keep_that_many_calls_in_flight(
    llama_server: LlamaServer, make_settings: Callable[..., Settings], concurrency: int
) -> None:
    """With daemon.concurrency = N the server is seen processing N requests at once (never more), and every
    capture is carried to done."""
    settings = make_settings(
        model={
            "backend": "openai",
            "openai_base_url": llama_server.base_url,
            "name": "smollm2-135m",
            "num_predict": 128,
            "timeout_s": 300.0,
        },
        daemon={"concurrency": concurrency},
    )
    settings.inbox.path.mkdir(parents=True)
    for index, text in enumerate(NOTES):
        (settings.inbox.path / f"note-{index}.txt").write_text(text + "\n", encoding="utf-8")
    with Journal(settings.journal.path) as journal, BusyWatch(llama_server) as watch:
        report = ingest(settings, [settings.inbox.path], journal=journal)
        counts = journal.status.counts()
    assert not report.unfinished and counts["done"] + counts["failed"] == len(NOTES), counts
    assert watch.most == concurrency
