"""Test doubles shipped with MemBrane, for its own tests and for users' (see ollama_server)."""

from membrane.testing.ollama_server import FakeOllama, RecordedRequest, ScriptedModel

__all__ = ["FakeOllama", "RecordedRequest", "ScriptedModel"]
