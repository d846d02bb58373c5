"""Helpers that tests (and some benchmarks) import; no tests here.

- `pipeline`: deterministic notes, replay files, settings, the daemon subprocess, graph snapshots
- `extraction`: building a records.ExtractionResult
- `explore`: the captures and stores of the show/facts and browser tests
- `fuzz`: hypothesis strategies and classifiers for capture files and model answers
- `openai_servers`: real OpenAI-compatible servers (llama-cpp-python's, llama.cpp's llama-server)
- `daemons`: several daemons on one Neo4j, with notes whose facts overlap
- `neo4j_env`: the test Neo4j server from MEMBRANE_TEST_NEO4J_* (`scripts/neo4j-local env`)
"""
