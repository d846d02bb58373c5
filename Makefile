# MemBrane developer commands. `make test` is the one CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# A stamp per extra; each changes with the dependencies and with the llama.cpp CPU flags this machine gets.
DEPS_HASH := $(shell { cat pyproject.toml constraints.txt scripts/llama-wheel; bash scripts/llama-wheel flags; } 2>/dev/null | sha256sum | cut -c1-12)
# `make demo` and the service: MemBrane and its embedded backend (llama.cpp, the shipped models' bases).
EMBEDDED_STAMP := $(VENV)/.installed-embedded-$(DEPS_HASH)
# `make test` and development: everything in `.[dev]` (tests, lint, plot, and `train`'s torch, about 5 GB).
DEV_STAMP := $(VENV)/.installed-dev-$(DEPS_HASH)

.PHONY: venv venv-embedded system-demo system-test lint test demo neo4j-start neo4j-stop ollama-start ollama-stop clean

# The system packages each command needs (both venvs need only the demo's; the
# tests add Java, Maven, Go, Chromium and Ollama's build headers): installed as
# root, else the one command that installs them is printed and make stops
# (scripts/setup-system).
system-demo:
	@PYTHON=$(PYTHON) bash scripts/setup-system demo

system-test:
	@PYTHON=$(PYTHON) bash scripts/setup-system test

# llama-cpp-python is built from source with explicit CPU flags (never
# GGML_NATIVE, never AMX: the native build crashes on AMX Xeons), the first
# time in about 5 minutes on 2 cores, into a wheel folder keyed by the flags.
# It is installed first, so the pip line after it finds it satisfied.
define install_venv
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	PYTHON=$(PY) scripts/llama-wheel install $(PY)
	$(PY) -m pip install -c constraints.txt -e '.[$(1)]'
endef

$(EMBEDDED_STAMP): | system-demo
	$(call install_venv,embedded)
	touch $(EMBEDDED_STAMP)

# `.[dev]` includes `.[embedded]`, so its stamp stands for both.
$(DEV_STAMP): | system-demo
	$(call install_venv,dev)
	touch $(DEV_STAMP) $(EMBEDDED_STAMP)

venv-embedded: $(EMBEDDED_STAMP)

venv: $(DEV_STAMP)

lint: venv
	$(VENV)/bin/ruff check membrane tests benchmarks
	$(VENV)/bin/ruff format --check membrane tests benchmarks
	$(VENV)/bin/mypy

# Lint, then the whole test suite against a real Neo4j and a real Ollama (each
# started here if not running, and stopped again only if this target started it;
# Ollama is built the first time, about 4 minutes), llama.cpp's llama-server
# (built the first time from the llama-cpp-python sdist, then cached) and real
# tiny models.
test: system-test lint
	@PYTHON=$(PY) scripts/llama-server build >/dev/null
	@PYTHON=$(PY) bash scripts/with-neo4j bash scripts/with-ollama $(PY) -m pytest $(PYTEST_ARGS)

# The main job on embedded defaults: sample captures through a temporary
# inbox, the in-process tiny model and the journal-only store. Installs only
# `.[embedded]` (no torch); after `make venv` it finds that already installed.
demo: system-demo venv-embedded
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
