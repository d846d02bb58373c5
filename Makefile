# MemBrane developer commands. `make test` is the one CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The stamp changes with the dependencies and with the llama.cpp CPU flags this machine gets.
STAMP := $(VENV)/.installed-$(shell { cat pyproject.toml constraints.txt scripts/llama-wheel; bash scripts/llama-wheel flags; } 2>/dev/null | sha256sum | cut -c1-12)

.PHONY: venv lint test demo neo4j-start neo4j-stop ollama-start ollama-stop clean

$(STAMP):
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found (Python 3.11+ is required)" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# llama-cpp-python is built from source with explicit CPU flags (never
	# GGML_NATIVE, never AMX: the native build crashes on AMX Xeons), the first
	# time in about 5 minutes on 2 cores, into a wheel folder keyed by the flags.
	# It is installed first, so the line after it finds it satisfied.
	PYTHON=$(PY) scripts/llama-wheel install $(PY)
	$(PY) -m pip install -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

lint: venv
	$(VENV)/bin/ruff check membrane tests benchmarks
	$(VENV)/bin/mypy

# Lint, then the whole test suite against a real Neo4j and a real Ollama (each
# started here if not running, and stopped again only if this target started it;
# Ollama is built the first time, about 4 minutes) and real tiny models.
test: lint
	@PYTHON=$(PY) bash scripts/with-neo4j bash scripts/with-ollama $(PY) -m pytest $(PYTEST_ARGS)

# The main job on embedded defaults: sample captures through a temporary
# inbox, the in-process tiny model and the journal-only store.
demo: venv
	@bash scripts/demo

neo4j-start:
	scripts/neo4j-local start

neo4j-stop:
	scripts/neo4j-local stop

ollama-start: venv
	PYTHON=$(PY) scripts/ollama-local start

ollama-stop:
	scripts/ollama-local stop

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info demo-out bench-out
