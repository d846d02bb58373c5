"""The Neo4j server the tests and benchmarks use, as `scripts/neo4j-local env` exports it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def neo4j_from_env() -> dict[str, Any] | None:
    """{"uri", "user", "password"} from MEMBRANE_TEST_NEO4J_*, the password file winning; None without a URI."""
    uri = os.environ.get("MEMBRANE_TEST_NEO4J_URI")
    if not uri:
        return None
    password = os.environ.get("MEMBRANE_TEST_NEO4J_PASSWORD", "")
    password_file = os.environ.get("MEMBRANE_TEST_NEO4J_PASSWORD_FILE")
    if password_file:
        password = Path(password_file).read_text(encoding="utf-8").strip()
    return {"uri": uri, "user": os.environ.get("MEMBRANE_TEST_NEO4J_USER", "neo4j"), "password": password}


def neo4j_required() -> dict[str, Any]:
    """neo4j_from_env for a benchmark that cannot run without the server: exits with the command that starts one."""
    server = neo4j_from_env()
    if server is None:
        raise SystemExit('needs MEMBRANE_TEST_NEO4J_URI: eval "$(scripts/neo4j-local env)"')
    return server
