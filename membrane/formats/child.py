"""The child process one document is converted in: `python -m membrane.formats.child`.

Reads one JSON line (format, limits, memory and CPU limits), then the
document's bytes to the end of stdin; limits its own address space and CPU
time before any converter is imported; writes one JSON object to stdout:
{"text", "metadata"} or {"refused": {"code", "message", "hint"}}. Anything
a library prints goes to stderr, so stdout carries only the answer.
"""

from __future__ import annotations

import json
import resource
import sys
from typing import Any


def _limit(memory_bytes: int, cpu_s: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 5))


def _answer(request: dict[str, Any], data: bytes) -> dict[str, Any]:
    from membrane.formats import convert_here
    from membrane.formats.base import ConversionRefused, Limits

    limits = Limits(**request["limits"])
    try:
        converted = convert_here(request["format"], data, limits)
    except ConversionRefused as exc:
        return {"refused": {"code": exc.code, "message": exc.reason, "hint": exc.hint}}
    except MemoryError:
        return {
            "refused": {
                "code": "conversion_failed",
                "message": "the converter ran out of memory "
                f"({request['memory_bytes'] // 2**20} MiB, inbox.convert_memory_mb)",
                "hint": "The file may be built to exhaust readers; if it is an ordinary document, "
                "raise inbox.convert_memory_mb and move it back to the inbox.",
            }
        }
    return {"text": converted.text, "metadata": dict(converted.metadata)}


def main() -> None:
    answer_to = sys.stdout
    sys.stdout = sys.stderr  # a library's print() must not corrupt the answer
    request = json.loads(sys.stdin.buffer.readline())
    _limit(int(request["memory_bytes"]), int(request["cpu_s"]))
    data = sys.stdin.buffer.read()
    answer = _answer(request, data)
    answer_to.write(json.dumps(answer, ensure_ascii=True))
    answer_to.flush()


if __name__ == "__main__":
    main()
