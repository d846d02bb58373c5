"""The test rig itself: a real Neo4j over Bolt with auth, and a real tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.neo4j


def test_bolt_round_trip_with_authentication(neo4j: Any) -> None:
    """A parameterised write and read over Bolt against the authenticated server."""
    name = "round ' trip `}) // ✓"
    neo4j.execute_query("CREATE (:RigProbe {name: $name})", name=name)
    records = neo4j.execute_query("MATCH (p:RigProbe) RETURN p.name AS name").records
    assert [r["name"] for r in records] == [name]


def test_server_is_neo4j_5_26_community(neo4j: Any) -> None:
    """The rig serves the LTS line the project targets."""
    record = neo4j.execute_query("CALL dbms.components() YIELD versions, edition RETURN *").records[0]
    assert record["versions"][0].startswith("5.26.")
    assert record["edition"] == "community"


def test_wrong_password_is_refused(neo4j_server: Any) -> None:
    """Authentication is on: a wrong password is rejected."""
    from neo4j import GraphDatabase
    from neo4j.exceptions import AuthError

    with GraphDatabase.driver(neo4j_server.uri, auth=(neo4j_server.user, "wrong-password")) as driver:
        with pytest.raises(AuthError):
            driver.verify_connectivity()


@pytest.mark.model
def test_tiny_model_generates(tiny_model_path: Path) -> None:
    """llama-cpp-python loads the packaged GGUF and generates tokens."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(tiny_model_path), n_ctx=512, verbose=False, seed=0)
    out = llm.create_chat_completion(messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0)
    assert out["usage"]["completion_tokens"] > 0
    assert out["choices"][0]["message"]["content"].strip()
