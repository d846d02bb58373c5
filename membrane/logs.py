"""structlog setup, the only global logging state.

JSON lines when stderr is not a terminal or when running under systemd
(JOURNAL_STREAM / INVOCATION_ID set), readable console lines otherwise. Every
event is a stable snake_case name (``capture_done``), with data in keys.
A processor masks secrets: any key that looks like a credential, and the
configured Neo4j password wherever it appears in a value.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import TextIO

import structlog
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

__all__ = ["RedactSecrets", "configure_logging", "get_logger"]

# Whole words of a key ("neo4j_password", "auth_token", "apiKey"), so that
# "tokens_per_second" or "author" are not taken for secrets.
_SECRET_WORD = re.compile(r"(?:^|_)(?:pass(?:word)?|passwd|secret|token|credentials?|api_?key|auth)(?:_|$)")


def _is_secret_key(key: object) -> bool:
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", str(key))  # camelCase -> camel_Case
    return bool(_SECRET_WORD.search(re.sub(r"[^a-z0-9]+", "_", words.lower())))


_URI_PASSWORD = re.compile(r"(?P<scheme>[a-z0-9+]+://[^:/@\s]+:)[^@\s]+@", re.IGNORECASE)
MASK = "***"


class RedactSecrets:
    """Masks credential-like keys, passwords inside URIs, and known secret values."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self.secrets = tuple(s for s in secrets if s)

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        for key, value in list(event_dict.items()):
            if key != "event" and _is_secret_key(key) and value not in (None, ""):
                event_dict[key] = MASK
            else:
                event_dict[key] = self._scrub(value)
        return event_dict

    def _scrub(self, value: object) -> object:
        if isinstance(value, str):
            value = _URI_PASSWORD.sub(r"\g<scheme>" + MASK + "@", value)
            for secret in self.secrets:
                value = value.replace(secret, MASK)
            return value
        if isinstance(value, dict):
            return {k: MASK if _is_secret_key(k) else self._scrub(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._scrub(v) for v in value)
        return value


def _use_json(fmt: str, stream: TextIO) -> bool:
    if fmt != "auto":
        return fmt == "json"
    under_systemd = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    return under_systemd or not stream.isatty()


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    *,
    secrets: tuple[str, ...] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog once for the process; safe to call again (tests, CLI)."""
    stream = stream or sys.stderr
    renderer: Processor
    if _use_json(fmt, stream):
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            RedactSecrets(secrets),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> FilteringBoundLogger:
    """The logger of module `name`: a filtering bound logger, as configure_logging (and
    structlog's own default) makes them; it binds to the configuration on first use."""
    logger: FilteringBoundLogger = structlog.get_logger(name)
    return logger
