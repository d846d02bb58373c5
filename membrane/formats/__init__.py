"""Document formats, turned into text and metadata before the pipeline reads
them: PDF (pdf.py), web pages saved as HTML (html.py), Word files (docx.py)
and e-mail (eml.py). capture.py reads the file and calls `convert_isolated`;
the text then takes the same path as a .txt capture.

Each converter runs in a child process (`python -m membrane.formats.child`)
with an address-space limit and a wall-clock timeout: PDF, zip and HTML
parsers are large C and Python code fed untrusted files, and a file that
makes one loop, exhaust memory or crash must cost that file, never the
daemon. The child is spawned per document (about 0.2 to 0.5 s with its
imports, against seconds of model time per chunk of the text it yields).

The libraries (pdfminer.six, trafilatura, python-docx) come with the
`formats` extra; without them a document is refused with code
`missing_extra`, whose hint names the extra. E-mail needs only the standard
library (an HTML-only body or an attached document needs the extra).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from membrane.errors import exit_description
from membrane.formats.base import ConversionRefused, Converted, Limits, refuse_missing, too_long

__all__ = [
    "DOCUMENT_FORMATS",
    "ConversionRefused",
    "Converted",
    "Limits",
    "convert_here",
    "convert_isolated",
    "missing_libraries",
]

# File extension -> format name.
DOCUMENT_FORMATS = {".pdf": "pdf", ".html": "html", ".htm": "html", ".docx": "docx", ".eml": "eml"}
# Format -> (module to import, distribution to name), for the formats that need the extra.
_LIBRARIES = {
    "pdf": ("pdfminer", "pdfminer.six"),
    "html": ("trafilatura", "trafilatura"),
    "docx": ("docx", "python-docx"),
}
# How refusals name each format.
_NAMES = {"pdf": "PDF", "html": "web page", "docx": "Word file", "eml": "e-mail"}
CHILD_MODULE = "membrane.formats.child"
# What the child may print besides its answer (warnings on stderr) that is kept for the reason.
_STDERR_TAIL = 300


def missing_libraries() -> dict[str, str]:
    """Format -> the distribution it needs that is not installed (empty when the extra is)."""
    return {fmt: dist for fmt, (module, dist) in _LIBRARIES.items() if importlib.util.find_spec(module) is None}


def convert_here(fmt: str, data: bytes, limits: Limits) -> Converted:
    """Convert in this process (the child's work; tests and fuzzing of one converter)."""
    module = importlib.import_module(f"{__name__}.{fmt}")
    converted: Converted = module.convert(data, limits)
    if len(converted.text) > limits.max_text_chars:
        raise too_long(_NAMES.get(fmt, fmt), f"{len(converted.text):,}", limits)
    return converted


def convert_isolated(fmt: str, data: bytes, limits: Limits, *, timeout_s: float, memory_bytes: int) -> Converted:
    """Convert in a child process under `memory_bytes` of address space and `timeout_s`;
    raises ConversionRefused (with a code) for every way it can fail."""
    if fmt in _LIBRARIES and fmt in missing_libraries():
        raise refuse_missing(fmt, _LIBRARIES[fmt][1])
    request = json.dumps(
        {
            "format": fmt,
            "memory_bytes": memory_bytes,
            "cpu_s": int(timeout_s) + 5,
            "limits": {
                "max_text_chars": limits.max_text_chars,
                "max_bytes": dict(limits.max_bytes),
                "max_unzipped_bytes": limits.max_unzipped_bytes,
            },
        }
    )
    try:
        done = subprocess.run(
            [sys.executable, "-m", CHILD_MODULE],
            input=request.encode() + b"\n" + data,
            capture_output=True,
            timeout=timeout_s,
            env=_child_env(),
            close_fds=True,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ConversionRefused(
            "conversion_timeout",
            f"converting the {_NAMES[fmt]} took longer than {timeout_s:g} s (inbox.convert_timeout_s)",
            hint="The file may be built to stall readers; if it is an ordinary document, raise "
            "inbox.convert_timeout_s and move it back to the inbox.",
        ) from None
    return _answer(fmt, done, memory_bytes)


def _answer(fmt: str, done: subprocess.CompletedProcess[bytes], memory_bytes: int) -> Converted:
    try:
        answer: dict[str, Any] = json.loads(done.stdout.decode("utf-8")) if done.stdout else {}
    except (UnicodeDecodeError, ValueError):
        answer = {}
    if "refused" in answer:
        refused = answer["refused"]
        raise ConversionRefused(refused["code"], refused["message"], hint=refused.get("hint", ""))
    if "text" in answer:
        return Converted(answer["text"], answer.get("metadata", {}))
    raise ConversionRefused(
        "conversion_failed",
        f"the {_NAMES[fmt]} converter ended without an answer "
        f"({exit_description(done.returncode)}){_tail(done.stderr)}",
        hint=f"The file may be damaged or built to crash readers; the converter may use "
        f"{memory_bytes // 2**20} MiB (inbox.convert_memory_mb).",
    )


def _tail(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return f": {lines[-1][-_STDERR_TAIL:]}" if lines else ""


def _child_env() -> dict[str, str]:
    # The child must import this very membrane package, also when it is not installed
    # (a source tree on sys.path only, as under pytest or a git worktree).
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the folder holding membrane/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env
