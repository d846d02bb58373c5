"""Time for people and the retry policy: ISO-8601 UTC stamps and exponential backoff.

Owned here because the journal, the inbox's sidecars and the pipeline's retry
policy all need them and none of them owns the others' clock.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["ISO_FORMAT", "backoff_delay", "iso_utc", "parse_iso_utc"]

ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def iso_utc(epoch: float | None = None) -> str:
    """``2026-01-02T03:04:05.123456Z``: fixed width, so strings sort by time."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC)
    return moment.strftime(ISO_FORMAT)


def parse_iso_utc(text: str) -> float:
    """The epoch seconds of a stamp written by iso_utc."""
    return datetime.strptime(text, ISO_FORMAT).replace(tzinfo=UTC).timestamp()


def backoff_delay(attempts: int, base_s: float, max_s: float) -> float:
    """Exponential backoff: base * 2^(attempts-1) seconds, capped at max_s (attempts >= 1)."""
    return float(min(max_s, base_s * 2 ** max(0, min(attempts - 1, 60))))
