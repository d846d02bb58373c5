"""Time for people and the retry policy: ISO-8601 UTC stamps and exponential backoff.

Owned here because the journal, the inbox's sidecars, the graph's and the
resolver's timestamps, bench reports, trained models' manifests and the
pipeline's retry policy all need them and none of them owns the others' clock.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = [
    "ISO_FORMAT",
    "ISO_SECONDS_FORMAT",
    "backoff_delay",
    "format_iso_utc",
    "iso_utc",
    "iso_utc_seconds",
    "parse_iso_utc",
]

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
ISO_SECONDS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # reports and manifests: a moment a person reads


def format_iso_utc(moment: datetime) -> str:
    """An aware datetime as ``2026-01-02T03:04:05.123456Z``: fixed width, so strings sort by time."""
    return moment.astimezone(UTC).strftime(ISO_FORMAT)


def iso_utc(epoch: float | None = None) -> str:
    """Now (or `epoch`) in format_iso_utc's form."""
    return format_iso_utc(datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC))


def iso_utc_seconds() -> str:
    """Now as ``2026-01-02T03:04:05Z``: the created_at of bench reports and trained models' manifests."""
    return datetime.now(UTC).strftime(ISO_SECONDS_FORMAT)


def parse_iso_utc(text: str) -> float:
    """The epoch seconds of a stamp written by iso_utc."""
    return datetime.strptime(text, ISO_FORMAT).replace(tzinfo=UTC).timestamp()


def backoff_delay(attempts: int, base_s: float, max_s: float) -> float:
    """Exponential backoff: base * 2^(attempts-1) seconds, capped at max_s (attempts >= 1)."""
    return float(min(max_s, base_s * 2 ** max(0, min(attempts - 1, 60))))
