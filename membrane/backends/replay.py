"""The replay backend: answers with recorded raw outputs instead of a model.

Records come from a JSONL file (``{"text": ..., "output": ...}`` per line;
several lines with the same text are successive attempts: first answer, first
repair, ...) or from the journal's successful extractions, which the caller
reads and passes in (this module never imports the journal). A request is
answered by its chunk text (``request.text``, whitespace-trimmed) and its
attempt number; past the last recorded attempt the last output is repeated.
An unrecorded text is a permanent ModelNotFound: replay cannot invent output.

For tests, benchmarks and reproducing an incident without a model.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from membrane.errors import ConfigError, ModelNotFound
from membrane.files import JsonlLineError, read_jsonl
from membrane.records import BackendCheck, Generation, GenerationRequest

if TYPE_CHECKING:
    from membrane.backends import RecordedOutputs
    from membrane.config import Settings

__all__ = ["ReplayBackend", "read_replay_file"]


def _key(text: str) -> str:
    return text.strip()


def read_replay_file(path: Path) -> list[tuple[str, str]]:
    """(text, output) pairs from a replay file; a bad line is a ConfigError naming it."""
    pairs: list[tuple[str, str]] = []
    try:
        for number, record in read_jsonl(path):
            try:
                pairs.append((str(record["text"]), str(record["output"])))
            except (KeyError, TypeError) as exc:
                raise _bad_line(path, number, exc) from exc
    except OSError as exc:
        raise ConfigError(f"model.replay_file {str(path)!r}: {exc.strerror}", key="model.replay_file") from exc
    except JsonlLineError as exc:
        raise _bad_line(path, exc.number, exc.error) from exc.error
    return pairs


def _bad_line(path: Path, number: int, exc: Exception) -> ConfigError:
    return ConfigError(
        f"{path}:{number}: expected a JSON object with 'text' and 'output' ({exc})",
        key="model.replay_file",
    )


class ReplayBackend:
    """Recorded outputs keyed by chunk text and attempt."""

    name = "replay"

    def __init__(self, records: Iterable[tuple[str, str]], *, source: str = "records") -> None:
        self.source = source
        self._outputs: dict[str, list[str]] = {}
        for text, output in records:
            self._outputs.setdefault(_key(text), []).append(output)

    @classmethod
    def from_file(cls, path: Path) -> ReplayBackend:
        return cls(read_replay_file(path), source=str(path))

    @classmethod
    def from_settings(cls, settings: Settings, recorded: RecordedOutputs | None = None) -> ReplayBackend:
        """From model.replay_file when set, else from `recorded` (the journal's outputs, read by the caller)."""
        if settings.model.replay_file is not None:
            return cls.from_file(settings.model.replay_file)
        if recorded is None:
            raise ConfigError(
                "the replay backend needs model.replay_file, or recorded outputs passed in by its caller",
                key="model.replay_file",
            )
        return cls(recorded(), source=f"journal {settings.journal.path}")

    def generate(self, request: GenerationRequest) -> Generation:
        started = time.monotonic()
        outputs = self._outputs.get(_key(request.text))
        if not outputs:
            digest = hashlib.sha256(_key(request.text).encode("utf-8")).hexdigest()[:12]
            raise ModelNotFound(
                f"replay ({self.source}) has no recorded output for this text "
                f"(sha256 {digest}…, {len(request.text)} characters)",
                hint="Record outputs for it first, or use a real backend.",
            )
        text = outputs[min(request.attempt, len(outputs) - 1)]
        return Generation(
            text=text,
            model=request.model,
            prompt_tokens=0,
            completion_tokens=0,
            seconds=time.monotonic() - started,
            done_reason="stop",
        )

    def list_models(self) -> list[str]:
        return ["replay"]

    def parameters(self, model: str) -> str:
        return ""

    def check(self, model: str) -> BackendCheck:
        count = len(self._outputs)
        if not count:
            return BackendCheck(False, f"replay ({self.source}) holds no recorded outputs", "record some first")
        return BackendCheck(True, f"replay ({self.source}) holds outputs for {count} texts")
