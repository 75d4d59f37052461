# etl — run `make help` for the targets. Every target sets up .venv itself on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv install test soak lint format demo bench migrate clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP) ## create .venv and install the project with its dev extras

install: $(STAMP) ## same as venv

test: $(STAMP) ## run the test suite (SQLite always; PostgreSQL via ETL_TEST_POSTGRES_URL or local binaries)
	$(BIN)/pytest -q -m "not soak"

soak: $(STAMP) ## the long sweeps: SIGKILL at every page and request on PostgreSQL, random kills of concurrent runs (ETL_SOAK_SEED); minutes
	$(BIN)/pytest -q -s -m soak

lint: $(STAMP) ## ruff lint + format check, mypy on etl/, the import layers (lint-imports)
	$(BIN)/ruff check etl tests migrations
	$(BIN)/ruff format --check etl tests migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP) ## apply ruff's formatting and safe fixes
	$(BIN)/ruff check --fix etl tests migrations
	$(BIN)/ruff format etl tests migrations

demo: $(STAMP) ## run the real job against the built-in sandbox (no credentials)
	$(BIN)/etl demo

bench: $(STAMP) ## the CLI against the sandbox: CPU, RSS, API calls, wall vs the APIs' bound (ETL_BENCH_LARGE=1: 100k)
	$(BIN)/python -m tests.bench

migrate: $(STAMP) ## upgrade the state database named by jobs.yaml / ETL_DATABASE_URL
	$(BIN)/etl db upgrade

clean: ## remove .venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
