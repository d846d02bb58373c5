"""Scheduled re-benchmarks: triggers from config, only-when-idle, and the daemon's
next capture using the model the scheduler promoted."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from membrane.bench import BenchScheduler
from membrane.config import Settings
from membrane.daemon import Daemon
from membrane.errors import ConfigError
from membrane.journal import CaptureState, Journal
from membrane.schema import ModelRef
from membrane.testing.ollama_server import FakeOllama
from tests.support.pipeline import REFERENCE


def same_answer_gold(path: Path, cases: int) -> Path:
    """A gold set whose every case has the reference labels, so one scripted answer is right for all."""
    text = "Docker is deployed on the Kubernetes cluster managed by the DevOps team."
    records = [{"id": f"s{i:02d}", "text": f"{text} ({i})", **REFERENCE, "tags": []} for i in range(cases)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def journal(make_settings: Callable[..., Settings]) -> Iterator[Journal]:
    with Journal(make_settings().journal.path) as journal:
        yield journal


def test_cron_schedule_becomes_a_cron_trigger(make_settings: Callable[..., Settings], journal: Journal) -> None:
    """bench.schedule is read as a crontab line; it wins over interval_hours."""
    settings = make_settings(bench={"schedule": "0 3 * * *", "interval_hours": 6})
    trigger = BenchScheduler(settings, journal, lambda: True).trigger()
    assert isinstance(trigger, CronTrigger)
    assert str(trigger.fields[5]) == "3"  # the hour field


def test_interval_and_missing_or_bad_schedules(make_settings: Callable[..., Settings], journal: Journal) -> None:
    """interval_hours gives an interval trigger; no schedule, or a bad cron line, is a ConfigError on bench.schedule."""
    trigger = BenchScheduler(make_settings(bench={"interval_hours": 6}), journal, lambda: True).trigger()
    assert isinstance(trigger, IntervalTrigger) and trigger.interval.total_seconds() == 6 * 3600
    for bench in ({}, {"schedule": "every night"}):
        with pytest.raises(ConfigError) as info:
            BenchScheduler(make_settings(bench=bench), journal, lambda: True).trigger()
        assert info.value.key == "bench.schedule"


def test_interval_fires_one_run_at_a_time_and_skips_while_busy(
    make_settings: Callable[..., Settings], journal: Journal
) -> None:
    """A ~1 s interval fires on its own, with max_instances=1 and coalescing; while busy it runs no bench."""
    settings = make_settings(bench={"interval_hours": 0.0003})
    scheduler = BenchScheduler(settings, journal, is_idle=lambda: False)
    scheduler.start()
    try:
        job = scheduler.job
        assert (job.max_instances, job.coalesce) == (1, True)
        assert scheduler.finished.wait(10), "the interval job never fired"
    finally:
        scheduler.shutdown()
    assert scheduler.runs >= 1
    assert journal.models.bench_runs() == []
    assert journal.models.last_promotion() is None


@pytest.mark.slow
def test_scheduled_promotion_applies_to_the_daemons_next_capture(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The daemon's scheduler benches, promotes the clear winner, and the next capture is extracted with it, no
    restart."""
    gold = same_answer_gold(tmp_path / "gold.jsonl", 12)
    with FakeOllama() as ollama:
        ollama.add_scripted("good:1b", [json.dumps(REFERENCE)])
        ollama.add_scripted("bad:1b", ['{"entities": [], "relationships": []}'])
        settings = make_settings(
            model={"backend": "ollama", "name": "bad:1b", "ollama_host": ollama.url},
            bench={
                "eval_files": [gold],
                "interval_hours": 1000,
                "candidates": ["ollama:good:1b"],
                "include_embedded": False,
                "bootstrap_samples": 500,
            },
        )
        daemon = Daemon(settings, install_signals=False)
        daemon.start()
        try:
            assert isinstance(daemon.scheduler, BenchScheduler)
            daemon.scheduler.run_now()
            assert daemon.scheduler.finished.wait(60), "the scheduled bench did not finish"
            assert daemon.journal is not None
            assert daemon.journal.models.last_promotion() == ModelRef("ollama", "good:1b")
            assert daemon.journal.models.promotions(1)[0]["evidence"]["lower_bound"] > 0
            capture = settings.inbox.path / "note.txt"
            capture.write_text("Docker is deployed on the Kubernetes cluster managed by the DevOps team.\n")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and daemon.journal.status.counts().get("done", 0) == 0:
                time.sleep(0.2)
            (record,) = daemon.journal.captures.in_states([CaptureState.DONE])
            extraction = daemon.journal.extractions.latest(record.sha256)
        finally:
            daemon.shutdown()
    assert extraction is not None and (extraction.result.backend, extraction.result.model) == ("ollama", "good:1b")
    assert ollama.chat_requests()[-1]["model"] == "good:1b"
