"""End to end with the real tiny model: a capture dropped into the inbox goes
through the embedded llama.cpp backend (SmolLM2-135M) into Neo4j."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from membrane.config import Settings
from membrane.daemon import ingest
from membrane.journal import Journal

pytestmark = [pytest.mark.neo4j, pytest.mark.model, pytest.mark.slow]


def test_real_tiny_model_capture_reaches_the_graph(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    tiny_model_path: Path,
    neo4j: Any,
    neo4j_settings: dict[str, Any],
) -> None:
    """SmolLM2 extracts a valid Extraction for a real note, and the capture is projected with provenance."""
    settings = make_settings(
        neo4j=neo4j_settings,
        model={"backend": "embedded", "name": "smollm2-135m", "num_predict": 256},
        extraction={"few_shot": False, "max_entities": 6, "max_relationships": 4},
    )
    settings.inbox.path.mkdir(parents=True)
    (settings.inbox.path / "homelab.txt").write_text(
        "Alice deployed Nextcloud on the Raspberry Pi.\n", encoding="utf-8"
    )
    report = ingest(settings, [settings.inbox.path])
    assert report.ok, report.outcomes
    with Journal(settings.journal.path) as journal:
        stored = journal.extractions.latest(report.outcomes[0].sha256 or "")
    assert stored is not None and stored.result.model == "smollm2-135m" and stored.result.completion_tokens > 0
    record = neo4j.execute_query(
        "MATCH (c:Capture {path: 'homelab.txt'}) RETURN c.model AS model, c.prompt_version AS version"
    ).records
    assert [r["model"] for r in record] == ["embedded:smollm2-135m"] and record[0]["version"]
    assert (settings.inbox.processed / "homelab.txt").exists()
