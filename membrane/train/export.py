"""Export: the trained peft adapter as a GGUF LoRA (llama.cpp's own
convert_lora_to_gguf.py), optionally a merged GGUF (convert_hf_to_gguf.py),
beside which the trainer writes the manifest (backends.catalogue.Manifest)
that makes the folder a trained model.

The converters come from the llama-cpp-python sdist that scripts/llama-wheel
caches (the same llama.cpp the runtime is built from); they are unpacked once
into the model cache. The LoRA converter reads the base's config and
tokenizer only, so the base is saved as a small Hugging Face folder without
weights.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from membrane.backends.catalogue import ADAPTER_FILE
from membrane.backends.gguf import model_cache_dir
from membrane.errors import MembraneError

__all__ = ["converter_dir", "convert_lora", "convert_merged", "save_base_config"]

CONVERTER_FILES = ("convert_lora_to_gguf.py", "convert_hf_to_gguf.py")
# The converters' own gguf-py comes too: PyPI's gguf 0.19.0 carries the same
# version string but lacks what this converter calls (gguf.LazyChunkedTensor).
CONVERTER_DIRS = ("conversion/", "gguf-py/")
CONVERT_TIMEOUT_S = 1800


def _wheel_cache() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "membrane" / "wheels"
    return Path(os.environ.get("MEMBRANE_WHEEL_CACHE", default))


def _sdist() -> Path:
    found = sorted(glob.glob(str(_wheel_cache() / "sdist" / "llama_cpp_python-*.tar.gz")))
    if not found:
        raise MembraneError(
            f"llama.cpp's converters come from the llama-cpp-python sdist, and none is in {_wheel_cache() / 'sdist'}",
            hint="Run scripts/llama-wheel (it downloads and caches the sdist), or "
            "pip download --no-deps --no-binary :all: llama-cpp-python -d ~/.cache/membrane/wheels/sdist",
        )
    return Path(found[-1])


def _wanted(member: str, prefix: str) -> bool:
    rest = member[len(prefix) :] if member.startswith(prefix) else None
    return rest is not None and (rest in CONVERTER_FILES or rest.startswith(CONVERTER_DIRS))


def converter_dir() -> Path:
    """llama.cpp's converter scripts, unpacked once from the cached sdist."""
    sdist = _sdist()
    stem = sdist.name.removesuffix(".tar.gz")
    target = model_cache_dir() / "llama-convert" / stem
    if all((target / name).exists() for name in (*CONVERTER_FILES, *CONVERTER_DIRS)):
        return target
    prefix = f"{stem}/vendor/llama.cpp/"
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            if member.isfile() and _wanted(member.name, prefix):
                member.name = member.name[len(prefix) :]
                archive.extract(member, tmp, filter="data")
    if target.exists():  # an older, incomplete unpacking
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def save_base_config(base_model: Any, tokenizer_source: Path, gguf_file: str | None, folder: Path) -> Path:
    """The base's config.json and tokenizer, without weights: all the LoRA converter reads."""
    from transformers import AutoTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    config = base_model.config.to_dict()
    # A config read from a GGUF names no architecture (the converter picks its
    # tensor mapping by it) and carries a quantization_config for the GGUF loader.
    config["architectures"] = config.get("architectures") or [type(base_model).__name__]
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    AutoTokenizer.from_pretrained(str(tokenizer_source), **kwargs).save_pretrained(str(folder))
    return folder


def _convert(script: str, args: list[str]) -> None:
    command = [sys.executable, str(converter_dir() / script), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("NO_LOCAL_GGUF", None)
    done = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S, check=False, env=env)
    if done.returncode != 0:
        raise MembraneError(f"{script} failed (exit {done.returncode}): {done.stderr.strip()[-1500:]}")


def convert_lora(adapter_dir: Path, base_config_dir: Path, out_folder: Path, outtype: str) -> Path:
    """The peft adapter in `adapter_dir` as out_folder/adapter.gguf."""
    out_folder.mkdir(parents=True, exist_ok=True)
    out = out_folder / ADAPTER_FILE
    _convert(
        "convert_lora_to_gguf.py",
        ["--base", str(base_config_dir), "--outtype", outtype, "--outfile", str(out), str(adapter_dir)],
    )
    return out


def convert_merged(merged_dir: Path, out_folder: Path, outtype: str) -> Path:
    """A merged Hugging Face model folder as out_folder/merged-<outtype>.gguf."""
    out = out_folder / f"merged-{outtype}.gguf"
    _convert("convert_hf_to_gguf.py", ["--outtype", outtype, "--outfile", str(out), str(merged_dir)])
    return out
