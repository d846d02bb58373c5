"""The MembraneError tree: every error MemBrane raises on purpose.

Third-party exceptions (neo4j, ollama, httpx, sqlite3, llama.cpp) are
translated into this tree at exactly one boundary each: graph/store.py for the
driver, the backend modules for model clients, journal/core.py for SQLite. Above
those boundaries code only catches MembraneError subclasses.

    MembraneError
    ├── ConfigError                 bad or missing setting (exit 2)
    ├── NotFound                    `show`/`facts`: no such entity or capture; close candidates (exit 1)
    ├── BadRequest                  a question that cannot be asked: a search without words, an
    │                               argument out of bounds, writes that are off (exit 2; a tool error)
    ├── PromotionRefused            `promote`: the policy keeps the champion, or no scores to judge by (exit 1)
    ├── JournalError                SQLite failed or a transition is not allowed
    │   │                           (the daemon stops, systemd restarts it; no capture fails)
    │   └── StaleClaim              the capture moved on (lease lost, retracted)
    ├── RetryableError              try again later; never fails a capture
    │   ├── ModelUnavailable        model server down, model loading, timeout
    │   │   └── ModelCrashed        the embedded model's child process died (a signal);
    │   │                           retried daemon.max_model_crashes times, then fails
    │   └── GraphUnavailable        Neo4j down, transient or expired session
    │       └── GraphAuthFailed     Neo4j refused the credentials (fix the config)
    └── PermanentError              retrying the same input cannot help
        ├── CaptureRejected         unreadable, empty, oversized, unsafe file
        ├── ExtractionFailed        no valid Extraction within the repair budget
        ├── ModelNotFound           the configured model does not exist
        ├── ModelRejected           the model server refused to register a model
        └── GraphWriteError         Neo4j refused the write (constraint, syntax)

Pydantic's ValidationError is worded here too (`validation_line`): a config
file, a model's answer and a JSON capture each report theirs as one line.

The pipeline's policy is one line: RetryableError -> back off and retry,
PermanentError -> the capture goes to failed/ with the error's reason and hint.
One exception to it: ModelCrashed is retried only daemon.max_model_crashes
times per capture, so a capture that crashes the model every time still ends.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError
    from pydantic_core import ErrorDetails

__all__ = [
    "BadRequest",
    "CaptureRejected",
    "ConfigError",
    "ExtractionFailed",
    "GraphAuthFailed",
    "GraphUnavailable",
    "GraphWriteError",
    "JournalError",
    "MembraneError",
    "ModelCrashed",
    "ModelNotFound",
    "ModelRejected",
    "ModelUnavailable",
    "NotFound",
    "PermanentError",
    "PromotionRefused",
    "RetryableError",
    "StaleClaim",
    "error_key",
    "exit_description",
    "error_message",
    "validation_line",
]


class MembraneError(Exception):
    """Base of every error MemBrane raises on purpose.

    `hint` is a sentence a person can act on; it ends up in failed/ sidecars,
    `membrane status` and `doctor` output.
    """

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def reason(self) -> str:
        return str(self)


class ConfigError(MembraneError):
    """A setting is missing, unknown or has a bad value; names the key."""

    def __init__(self, message: str, *, key: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.key = key


class NotFound(MembraneError):
    """The entity or capture a person asked about is not there, or the name fits
    several; `candidates` are the close matches to offer instead (display strings)."""

    def __init__(self, message: str, *, candidates: tuple[str, ...] = (), hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.candidates = tuple(candidates)


class BadRequest(MembraneError):
    """A question that cannot be asked as put: a search without words, an argument
    out of its bounds, a write tool while writes are off. Nothing was read or changed."""


class PromotionRefused(MembraneError):
    """A manual promotion the policy refuses: the challenger does not clearly beat the
    champion on the last bench run, or has no scores there. `--force` overrides it."""


class JournalError(MembraneError):
    """The journal cannot do what was asked: SQLite failed, or a transition is not allowed.

    Neither retryable nor a capture's fault: the daemon should stop and be
    restarted rather than fail captures because of it.
    """

    hint = "Check the journal file (journal.path): disk space, permissions, only MemBrane writing it."


class StaleClaim(JournalError):
    """The capture is no longer in the state the caller holds it in (lease lost, retracted)."""


class RetryableError(MembraneError):
    """The same work may succeed later; `retry_after` is a suggested delay in seconds."""

    def __init__(self, message: str, *, hint: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class ModelUnavailable(RetryableError):
    hint = "Check that the model server is running (`membrane doctor`)."


class ModelCrashed(ModelUnavailable):
    """The process generating with the model died from native code (SIGSEGV, SIGILL,
    SIGABRT, SIGKILL from the OOM killer). The message names the model, its file and
    the signal; the hint is the fix for that signal. The next call starts a new process.
    """

    hint = "The model process crashed; see the signal in the message and `membrane doctor`."

    def __init__(self, message: str, *, signal: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.signal = signal  # "SIGSEGV", or "exit 3" for a non-signal exit


class GraphUnavailable(RetryableError):
    hint = "Check that Neo4j is running (`membrane doctor`); extracted facts wait in the journal."


class GraphAuthFailed(GraphUnavailable):
    """Neo4j refused the user or password.

    Retryable for the pipeline (extraction goes on and facts wait in the
    journal until the credentials are fixed), but reported distinctly by
    `membrane doctor`.
    """

    hint = "Check neo4j.user and the password (neo4j.password_file or the neo4j-password credential)."


class PermanentError(MembraneError):
    """Retrying the same input with the same model cannot succeed."""


class CaptureRejected(PermanentError):
    """The capture file itself is unusable (format, encoding, size, location)."""


class ModelNotFound(PermanentError):
    hint = "Pull or register the model, or change [model] in the config (`membrane models`)."


class ModelRejected(PermanentError):
    """The model server refused to register a model: a bad GGUF, adapter, template or parameter."""

    hint = "Check the GGUF and adapter files and the template and parameters given with them."


class ExtractionFailed(PermanentError):
    """The model gave no valid Extraction within the repair budget.

    Carries everything needed to reproduce and debug it: each raw output,
    each validation error, and the model.
    """

    hint = (
        "The model could not produce valid output for this text; try a stronger "
        "model (`membrane bench`) or split the capture, then move it back to the inbox."
    )

    def __init__(
        self,
        message: str,
        *,
        model: str,
        raw_outputs: list[str],
        errors: list[str],
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.model = model
        self.raw_outputs = list(raw_outputs)
        self.errors = list(errors)

    def details(self) -> dict[str, Any]:
        return {"model": self.model, "raw_outputs": self.raw_outputs, "errors": self.errors}


class GraphWriteError(PermanentError):
    hint = "Neo4j refused the write; see the error and `membrane doctor`."


# ---------------------------------------------------------------- pydantic's errors as one line


def error_key(error: ErrorDetails) -> str:
    """Where a pydantic error is, as dotted keys ("model.num_ctx"; "" for the whole input)."""
    return ".".join(str(part) for part in error["loc"])


def error_message(error: ErrorDetails) -> str:
    """A pydantic error's message, without the "Value error, " put before a validator's own text."""
    return error["msg"].removeprefix("Value error, ")


def validation_line(exc: ValidationError, describe: Callable[[ErrorDetails], str], *, limit: int | None = None) -> str:
    """A ValidationError as one line: each error as `describe` words it, joined by "; ",
    and past `limit` errors "(and N more)"."""
    errors = exc.errors()
    shown = errors if limit is None else errors[:limit]
    more = len(errors) - len(shown)
    return "; ".join(describe(error) for error in shown) + (f" (and {more} more)" if more > 0 else "")


def exit_description(code: int) -> str:
    """A child process's return code in words: its signal's name ("SIGSEGV") or "exit N"."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"
