"""The package's import graph: imports point down the layer list below and form no cycle.

The graph is read from the source with `ast`: every `import` and `from ... import`
of a membrane module, at module level and inside functions (a lazy import is
still a dependency), except those under `if TYPE_CHECKING:`, which only the
type checker runs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "membrane"
SURFACE = "membrane"  # the package's own __init__: an entry for that module alone

# Bottom first. A module may import modules of lower layers, and modules of its
# own package (the entry that covers it); entries side by side in one layer
# never import each other. An entry names a module or a package (all of it),
# except SURFACE, which names membrane/__init__.py only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("membrane.errors",),
    ("membrane.logs", "membrane.clock", "membrane.files"),
    ("membrane.schema",),
    ("membrane.records", "membrane.prompts", "membrane.relations"),
    ("membrane.config",),
    ("membrane.formats",),
    ("membrane.journal", "membrane.backends", "membrane.capture", "membrane.inbox", "membrane.resolve"),
    ("membrane.merge", "membrane.extract", "membrane.champion", "membrane.vault"),
    ("membrane.graph", "membrane.score"),
    ("membrane.export", "membrane.promote"),
    ("membrane.explore", "membrane.bench", "membrane.search"),
    ("membrane.pipeline", "membrane.train"),
    ("membrane.daemon", "membrane.doctor", "membrane.assistant"),
    ("membrane.mcp_server",),
    ("membrane.cli", "membrane.testing"),
    (SURFACE,),  # the public surface: nothing inside the package imports it
)

Edge = tuple[str, str, int]  # importer, imported, line


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


class _Imports(ast.NodeVisitor):
    """The membrane modules one file imports, with line numbers, skipping TYPE_CHECKING blocks."""

    def __init__(self, importer: str, is_package: bool, known: set[str]) -> None:
        self.importer, self.is_package, self.known = importer, is_package, known
        self.found: list[tuple[str, int]] = []

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found += [(alias.name, node.lineno) for alias in node.names if _ours(alias.name)]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        source = _absolute(node, self.importer, self.is_package)
        if not _ours(source):
            return
        for alias in node.names:  # `from membrane.backends import catalogue` imports the submodule
            submodule = f"{source}.{alias.name}"
            self.found.append((submodule if submodule in self.known else source, node.lineno))


def _ours(name: str) -> bool:
    return name == "membrane" or name.startswith("membrane.")


def import_edges(modules: dict[str, Path]) -> list[Edge]:
    edges: set[Edge] = set()
    for name, path in modules.items():
        visitor = _Imports(name, path.name == "__init__.py", set(modules))
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        edges.update((name, imported, line) for imported, line in visitor.found if imported != name)
    return sorted(edges)


def entry_of(module: str) -> str | None:
    """The most specific LAYERS entry covering `module`."""
    covering = [e for layer in LAYERS for e in layer if module == e or (e != SURFACE and module.startswith(e + "."))]
    return max(covering, key=len, default=None)


def layer_of(entry: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if entry in layer)


def _where(module: str, line: int, modules: dict[str, Path]) -> str:
    return f"{modules[module].relative_to(PACKAGE.parent)}:{line}"


def layering_violations(edges: list[Edge], modules: dict[str, Path]) -> Iterator[str]:
    for importer, imported, line in edges:
        mine, theirs = entry_of(importer), entry_of(imported)
        assert mine is not None and theirs is not None, f"{importer} or {imported} is in no layer"
        if mine == theirs or layer_of(theirs) < layer_of(mine):
            continue
        how = "upward" if layer_of(theirs) > layer_of(mine) else "sideways, within one layer"
        yield f"{_where(importer, line, modules)}: {importer} imports {imported} ({how}: {mine} -> {theirs})"


def find_cycle(edges: list[Edge]) -> list[Edge] | None:
    """One import cycle as its edges, or None (depth-first search, deterministic order)."""
    out: dict[str, list[Edge]] = {}
    for edge in edges:
        out.setdefault(edge[0], []).append(edge)
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[Edge] = []

    def visit(module: str) -> list[Edge] | None:
        state[module] = 1
        for edge in out.get(module, []):
            target = edge[1]
            if state.get(target) == 1:
                start = next((i for i, e in enumerate(path) if e[0] == target), len(path))
                return [*path[start:], edge]
            if target not in state:
                path.append(edge)
                cycle = visit(target)
                path.pop()
                if cycle:
                    return cycle
        state[module] = 2
        return None

    for module in sorted(out):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return all_modules()


@pytest.fixture(scope="module")
def edges(modules: dict[str, Path]) -> list[Edge]:
    return import_edges(modules)


def test_every_module_has_a_layer(modules: dict[str, Path]) -> None:
    """Each module of the package is covered by an entry of LAYERS, so a new module must be placed."""
    assert [m for m in modules if entry_of(m) is None] == []


def test_imports_point_down_the_layers(edges: list[Edge], modules: dict[str, Path]) -> None:
    """No module imports one of a higher layer, or a neighbour of its own layer outside its package."""
    violations = list(layering_violations(edges, modules))
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_no_import_cycle(edges: list[Edge], modules: dict[str, Path]) -> None:
    """The import graph, lazy imports included, has no cycle (also not inside a package)."""
    cycle = find_cycle(edges)
    described = [f"{_where(a, line, modules)}: {a} imports {b}" for a, b, line in cycle or []]
    assert cycle is None, "import cycle:\n" + "\n".join(described)


def test_the_checks_catch_an_upward_import_and_a_cycle(modules: dict[str, Path]) -> None:
    """An injected upward import is named with its file and line, and an injected cycle is found."""
    edges = [*import_edges(modules), ("membrane.schema", "membrane.pipeline", 7)]
    violations = list(layering_violations(edges, modules))
    assert violations == [
        "membrane/schema.py:7: membrane.schema imports membrane.pipeline (upward: membrane.schema -> membrane.pipeline)"
    ]
    cycle = find_cycle(edges)
    assert cycle is not None and ("membrane.schema", "membrane.pipeline", 7) in cycle
