"""membrane/clock.py: the ISO-8601 UTC stamps."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from membrane.clock import format_iso_utc, iso_utc, iso_utc_seconds, parse_iso_utc


def test_stamps_are_fixed_width_utc_and_round_trip() -> None:
    """Any aware moment prints in UTC with microseconds and a Z; iso_utc's stamps parse back to their epoch."""
    moment = datetime(2026, 1, 2, 5, 4, 5, 120, tzinfo=timezone(timedelta(hours=2)))
    assert format_iso_utc(moment) == "2026-01-02T03:04:05.000120Z"
    assert iso_utc(1767323045.5) == "2026-01-02T03:04:05.500000Z"
    assert parse_iso_utc(iso_utc(1767323045.5)) == 1767323045.5


def test_seconds_stamp_has_no_fraction() -> None:
    """The reports' and manifests' created_at is UTC to the second."""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", iso_utc_seconds())
