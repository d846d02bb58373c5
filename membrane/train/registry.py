"""Trained models on disk, and which prompt version each model expects.

A trained model is a folder holding ``adapter.gguf`` (a GGUF LoRA) and
``manifest.json`` (base, chat format, prompt version, training facts). Folders
are found in the package's own ``membrane/models/`` (the shipped default) and
under ``train.models_dir``; a later folder of the same name wins. This module
is pure file reading: the extractor and the embedded backend import it, so it
must never import torch or llama.cpp.

The prompt-version mapping lives here because the manifest is the one record
of what a model was trained on: a trained model (by its name, under any
backend) gets its manifest's version; every other model gets extract-v1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from membrane.logs import get_logger

if TYPE_CHECKING:
    from membrane.config import EmbeddedModel, Settings

__all__ = [
    "ADAPTER_FILE",
    "DEFAULT_PROMPT_VERSION",
    "MANIFEST_FILE",
    "TrainedModel",
    "discover",
    "extra_embedded_models",
    "prompt_version_for",
    "trained_embedded_models",
]

log = get_logger(__name__)

ADAPTER_FILE = "adapter.gguf"
MANIFEST_FILE = "manifest.json"
DEFAULT_PROMPT_VERSION = "extract-v1"  # the same value as extract.PROMPT_VERSION, without importing it


@dataclass(frozen=True)
class TrainedModel:
    """One trained model folder, as its manifest describes it."""

    name: str
    folder: Path
    base_path: str  # the base GGUF: a file path or "pypi:<distribution>"
    chat_format: str
    prompt_version: str
    n_ctx: int
    parameters: str
    manifest: dict[str, Any]

    @property
    def adapter(self) -> Path:
        return self.folder / ADAPTER_FILE


def _package_models_dir() -> Path:
    # membrane/models beside this subpackage; not importlib.resources, whose
    # answer for an editable install can be a multiplexed path.
    return Path(__file__).resolve().parent.parent / "models"


def _read(folder: Path) -> TrainedModel | None:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text("utf-8"))
        base = manifest["base"]
        model = TrainedModel(
            name=folder.name,
            folder=folder,
            base_path=str(base["path"]),
            chat_format=str(manifest["chat_format"]),
            prompt_version=str(manifest["prompt_version"]),
            n_ctx=int(base.get("n_ctx", 4096)),
            parameters=str(base.get("parameters", "")),
            manifest=manifest,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("trained_model_unreadable", folder=str(folder), error=str(exc))
        return None
    if not model.adapter.is_file():
        log.warning("trained_model_unreadable", folder=str(folder), error=f"no {ADAPTER_FILE}")
        return None
    return model


def discover(dirs: list[Path]) -> dict[str, TrainedModel]:
    """Trained models in `dirs` by folder name; a later directory overrides an earlier one."""
    found: dict[str, TrainedModel] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / MANIFEST_FILE).is_file()):
            model = _read(folder)
            if model is not None:
                found[model.name] = model
    return found


def _dirs(settings: Settings) -> list[Path]:
    return [_package_models_dir(), Path(settings.train.models_dir)]


def trained_models(settings: Settings) -> dict[str, TrainedModel]:
    """The shipped trained models, then those under train.models_dir."""
    return discover(_dirs(settings))


def trained_embedded_models(settings: Settings) -> dict[str, EmbeddedModel]:
    """Every trained model as an embedded model: its base GGUF, its adapter and its chat format."""
    from membrane.config import EmbeddedModel

    return {
        name: EmbeddedModel(
            path=model.base_path,
            chat_format=model.chat_format,
            n_ctx=model.n_ctx,
            parameters=model.parameters,
            lora_path=str(model.adapter),
        )
        for name, model in trained_models(settings).items()
    }


def extra_embedded_models(settings: Settings) -> dict[str, EmbeddedModel]:
    """The embedded models found on disk: installed anchors, then trained models."""
    from membrane.train.anchors import installed_anchor_models

    return {**installed_anchor_models(), **trained_embedded_models(settings)}


def prompt_version_for(settings: Settings, backend: str, model: str) -> str:
    """The prompt version `model` expects: its manifest's when it is a trained model, else extract-v1.

    Ollama names carry a tag; "name:latest" is the trained model "name".
    """
    name = model.removesuffix(":latest")
    if backend == "embedded" and name in settings.model.embedded:
        configured = settings.model.embedded[name]
        if not configured.lora_path:  # a plain base configured under a trained model's name
            return DEFAULT_PROMPT_VERSION
    trained = trained_models(settings).get(name)
    return trained.prompt_version if trained else DEFAULT_PROMPT_VERSION
