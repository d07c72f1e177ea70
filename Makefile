# One target per habit; people and CI use them the same way.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
# make run HOST=... PORT=...; unset, serve reads KEYSERVICE_HOST/PORT (else 127.0.0.1:8000).
HOST ?=
PORT ?=
# make test spreads the tests over this many processes (pytest-xdist; `auto`: one per CPU).
# Each has its own databases and servers; PYTEST_WORKERS=0 runs them in this one process.
PYTEST_WORKERS ?= auto

.PHONY: run test lint fmt typecheck bench bench-smoke services lock clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Exact versions from constraints.txt (make lock): the same set on every machine and in CI.
$(VENV)/.installed-server: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[server]'
	touch $@

$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@ $(VENV)/.installed-server

run: $(VENV)/.installed-server
	$(BIN)/keyservice serve $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

services:
	@bash scripts/ensure-services.sh

test: $(STAMP) services
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy src
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

fmt: $(STAMP)
	$(BIN)/ruff check --fix src tests bench examples
	$(BIN)/ruff format src tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy src

bench: $(STAMP) services
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-smoke: $(STAMP) services
	$(BIN)/python bench/run.py --smoke

# Resolve pyproject.toml's ranges afresh (newest releases) into constraints.txt; then run
# make test and commit both if it passes.
lock:
	rm -rf .lock-venv
	$(PY) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q -e '.[dev]'
	{ grep '^#' constraints.txt; .lock-venv/bin/pip freeze --exclude-editable; } \
	  > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
