# upgrader: developer entry points. `make demo` and `make test` do all the set-up they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export GOTOOLCHAIN := local

.PHONY: demo test lint unit e2e binaries cluster-up cluster-down bench clean venv

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

## Build (or reuse from ~/.cache/upgrader-e2e) etcd, Kubernetes, kwok, helm 4 and helm 3.
binaries: venv
	$(BIN)/python -m e2e.harness.binaries

## The main job on the built-in local cluster.
demo: binaries
	$(BIN)/python -m e2e.demo

## Lint, type-check, import contracts, unit tests and the e2e suite on a real local cluster.
test: lint binaries
	$(BIN)/pytest tests e2e

lint: venv
	$(BIN)/ruff check upgrader tests e2e
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: venv
	$(BIN)/pytest tests

e2e: binaries
	$(BIN)/pytest e2e

## A long-lived local cluster: prints the kubeconfig path.
cluster-up: binaries
	@$(BIN)/python -m e2e.harness.cluster up

cluster-down: venv
	@$(BIN)/python -m e2e.harness.cluster down

## Benchmarks print figures; nothing here is timed inside a test.
bench: binaries
	$(BIN)/python -m e2e.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache *.egg-info
