"""MemBrane's public surface: the names a program may import from `membrane`
to embed it (settings, the extraction schema, the journal, the extractor, the
graph store, the daemon and one-shot ingest, the error tree).

Every other module and name can change between versions. `tests/test_public_api.py`
pins this list.

A name loads its module on first use (PEP 562), so `import membrane` costs
nothing: every `import membrane.x` runs this file first, and the command line
and the embedded model's child process import only the few modules they need.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names for type checkers, which do not run __getattr__
    from membrane.config import Settings, load_settings
    from membrane.daemon import Daemon, IngestReport, ingest
    from membrane.errors import (
        BadRequest,
        CaptureRejected,
        ConfigError,
        ExtractionFailed,
        GraphAuthFailed,
        GraphUnavailable,
        GraphWriteError,
        JournalError,
        MembraneError,
        ModelCrashed,
        ModelNotFound,
        ModelRejected,
        ModelUnavailable,
        NotFound,
        PermanentError,
        PromotionRefused,
        RetryableError,
        StaleClaim,
    )
    from membrane.extract import Extractor, build_extractor, parse_output
    from membrane.graph.store import GraphStore
    from membrane.journal import Journal
    from membrane.records import ExtractionResult
    from membrane.schema import Entity, Extraction, ExtractionRules, ModelRef, Relationship

__all__ = [
    "BadRequest",
    "CaptureRejected",
    "ConfigError",
    "Daemon",
    "Entity",
    "Extraction",
    "ExtractionFailed",
    "ExtractionResult",
    "ExtractionRules",
    "Extractor",
    "GraphAuthFailed",
    "GraphStore",
    "GraphUnavailable",
    "GraphWriteError",
    "IngestReport",
    "Journal",
    "JournalError",
    "MembraneError",
    "ModelCrashed",
    "ModelNotFound",
    "ModelRef",
    "ModelRejected",
    "ModelUnavailable",
    "NotFound",
    "PermanentError",
    "PromotionRefused",
    "Relationship",
    "RetryableError",
    "Settings",
    "StaleClaim",
    "build_extractor",
    "ingest",
    "load_settings",
    "parse_output",
]

_HOMES: dict[str, tuple[str, ...]] = {
    "membrane.config": ("Settings", "load_settings"),
    "membrane.daemon": ("Daemon", "IngestReport", "ingest"),
    "membrane.extract": ("Extractor", "build_extractor", "parse_output"),
    "membrane.graph.store": ("GraphStore",),
    "membrane.journal": ("Journal",),
    "membrane.records": ("ExtractionResult",),
    "membrane.schema": ("Entity", "Extraction", "ExtractionRules", "ModelRef", "Relationship"),
}
# Every other name of __all__ is a class of the error tree, membrane.errors.
_HOME_OF = dict.fromkeys(__all__, "membrane.errors") | {
    name: module for module, names in _HOMES.items() for name in names
}


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'membrane' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups find it without coming here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
