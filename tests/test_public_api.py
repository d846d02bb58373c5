"""The public surface: `membrane.__all__` is pinned, each name imports from its home
module, `import membrane` stays light, and a built wheel ships the package with py.typed."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import membrane

ROOT = Path(__file__).resolve().parents[1]

# Changing this list changes what users may rely on: say so in the release notes.
PUBLIC = [
    "BadRequest",
    "CaptureRejected",
    "ConfigError",
    "Daemon",
    "Entity",
    "Extraction",
    "ExtractionFailed",
    "ExtractionResult",
    "ExtractionRules",
    "Extractor",
    "GraphAuthFailed",
    "GraphStore",
    "GraphUnavailable",
    "GraphWriteError",
    "IngestReport",
    "Journal",
    "JournalError",
    "MembraneError",
    "ModelCrashed",
    "ModelNotFound",
    "ModelRef",
    "ModelRejected",
    "ModelUnavailable",
    "NotFound",
    "PermanentError",
    "PromotionRefused",
    "Relationship",
    "RetryableError",
    "Settings",
    "StaleClaim",
    "build_extractor",
    "ingest",
    "load_settings",
    "parse_output",
]


def test_all_is_the_pinned_sorted_list() -> None:
    """`membrane.__all__` is exactly the pinned list, sorted, and `dir(membrane)` offers every name."""
    assert membrane.__all__ == PUBLIC == sorted(PUBLIC)
    assert set(PUBLIC) <= set(dir(membrane))


@pytest.mark.parametrize("name", PUBLIC)
def test_each_name_is_its_home_modules_object(name: str) -> None:
    """`from membrane import NAME` gives the very object its home module defines, and the home exports it."""
    home = importlib.import_module(membrane._HOME_OF[name])
    assert getattr(membrane, name) is getattr(home, name)
    assert name in home.__all__


def test_unknown_names_are_attribute_errors() -> None:
    """A name outside the surface is an AttributeError, as for any module, not a lazy import of something else."""
    with pytest.raises(AttributeError, match="no attribute 'Pipeline'"):
        _ = membrane.Pipeline


def test_type_checkers_see_the_same_names() -> None:
    """The TYPE_CHECKING imports (what mypy sees) name the same objects from the same modules as the lazy table."""
    tree = ast.parse((ROOT / "membrane" / "__init__.py").read_text(encoding="utf-8"))
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = {
        alias.name: node.module for node in guarded.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert imported == membrane._HOME_OF


def test_import_is_light() -> None:
    """`import membrane` loads no submodule and neither the Neo4j driver, numpy nor torch; a name loads only its
    home."""
    code = (
        "import sys, membrane; before = set(sys.modules); membrane.Settings; after = set(sys.modules);"
        "print(sorted(m for m in before if m.split('.')[0] in ('membrane', 'neo4j', 'numpy', 'torch')));"
        "print(sorted(m for m in after - before if m.startswith('membrane.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    at_import, for_settings = done.stdout.splitlines()
    assert at_import == "['membrane']"
    assert "membrane.graph" not in for_settings and "membrane.config" in for_settings


@pytest.mark.slow
def test_wheel_ships_the_package_with_py_typed(tmp_path: Path) -> None:
    """A wheel built from the sources holds membrane/__init__.py, py.typed, the subpackages and the prompts."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("membrane", "migrations"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        "-w",
        str(tmp_path / "dist"),
        str(source),
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("membrane-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in (
        "membrane/__init__.py",
        "membrane/py.typed",
        "membrane/promote.py",
        "membrane/backends/__init__.py",
        "membrane/train/__init__.py",
    ):
        assert path in names, path
    assert any(n.startswith("membrane/prompts/") and n.endswith(".txt") for n in names)
