"""The saved questions: the read queries people run, one file each in
membrane/queries/. Each file is a Neo4j Browser favourite as it stands (a
title comment, a `// :param name => example` line per parameter, the query),
and SavedQuestion strips the comments so the CLI runs the very same query with
driver parameters (see docs/design-notes.md, "The graph people see").
GraphStore.ask runs them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path

__all__ = ["QUERIES_DIR", "SavedQuestion", "saved_questions"]

QUERIES_DIR = Path(__file__).resolve().parent.parent / "queries"

# "// :param name => example": a comment, so the favourite stays one statement
# (Browser shows a multi-statement run as summaries, without the graph).
_PARAM_LINE = re.compile(r"^//\s*:param\s+([A-Za-z_][A-Za-z0-9_]*)\s*=>")


@dataclass(frozen=True)
class SavedQuestion:
    """One file of membrane/queries, named by its stem: `text` is what Neo4j
    Browser takes (a favourite); the rest is read from it."""

    name: str
    text: str

    @cached_property
    def _lines(self) -> list[str]:
        return self.text.splitlines()

    @property
    def title(self) -> str:
        """The first comment line, else the name."""
        first = self._lines[0] if self._lines else ""
        return first.removeprefix("//").strip() if first.startswith("//") else self.name

    @property
    def query(self) -> str:
        """What the driver runs: the text without its comment lines."""
        return "\n".join(line for line in self._lines if not line.lstrip().startswith("//")).strip()

    @property
    def params(self) -> tuple[str, ...]:
        """The names the `// :param` lines set, in order."""
        return tuple(name for name, _ in self._declared)

    @property
    def param_commands(self) -> tuple[str, ...]:
        """Those lines as the Browser commands to run first (with their example values)."""
        return tuple(command for _, command in self._declared)

    @cached_property
    def _declared(self) -> list[tuple[str, str]]:
        return [(m.group(1), line.removeprefix("//").strip()) for line in self._lines if (m := _PARAM_LINE.match(line))]


@cache
def saved_questions() -> dict[str, SavedQuestion]:
    """Every saved question by name (the file stem), read once."""
    return {
        path.stem: SavedQuestion(path.stem, path.read_text(encoding="utf-8"))
        for path in sorted(QUERIES_DIR.glob("*.cypher"))
    }
