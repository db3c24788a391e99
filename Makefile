# upgrader: developer entry points. `make demo` and `make test` do all the set-up they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export GOTOOLCHAIN := local

.PHONY: demo test reliability lint unit e2e binaries cluster-binaries chart-rbac lock lock-python cluster-up cluster-down world-up bench clean venv

# Every Python package (with pip, setuptools and wheel) comes from requirements.lock, pinned
# with hashes; the package itself is installed without resolving anything further.
$(BIN)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

venv: $(BIN)/.installed

## Build (or reuse from ~/.cache/upgrader-e2e) etcd, Kubernetes, kwok, helm 4, helm 3 and Prometheus, each
## from its committed lock (e2e/harness/go/<component>/), and check what is cached against it.
binaries: venv
	$(BIN)/python -m e2e.harness.binaries

## Only what the local cluster and the world run on (the demo needs no Prometheus).
CLUSTER_COMPONENTS := etcd kwok helm helm3 kubernetes
cluster-binaries: venv
	$(BIN)/python -m e2e.harness.binaries $(CLUSTER_COMPONENTS)

## Regenerate requirements.lock after changing a dependency in pyproject.toml (needs PyPI).
PIP_TOOLS_VERSION := 7.6.2
lock-python:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet pip-tools==$(PIP_TOOLS_VERSION)
	.lock-venv/bin/pip-compile --quiet --extra dev --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-find-links -o requirements.lock pyproject.toml requirements-build.in
	rm -rf .lock-venv

## Regenerate the chart's RBAC rules from upgrader.permissions (tests/test_incluster.py fails when they differ).
chart-rbac: venv
	$(BIN)/upgrader rbac > deploy/chart/files/rbac-rules.yaml

## Regenerate the locks after changing a pin in e2e/harness/binaries.py (COMPONENTS="kubernetes" for one).
COMPONENTS ?=
lock: venv
	$(BIN)/python -m e2e.harness.binaries lock $(COMPONENTS)

## The main job on the built-in local cluster: world up, upgrader against it, world down.
demo: cluster-binaries
	@$(MAKE) --no-print-directory world-up || { $(MAKE) --no-print-directory cluster-down; exit 1; }
	@$(BIN)/python -m e2e.demo; rc=$$?; $(MAKE) --no-print-directory cluster-down; exit $$rc

## Lint, type-check, import contracts, unit tests and the e2e suite on a real local cluster,
## then the reliability summary of what those same tests recorded (no suite runs twice).
test: lint binaries
	@rm -f $(RELIABILITY_LOG)
	@UPGRADER_RELIABILITY_LOG=$(abspath $(RELIABILITY_LOG)) $(BIN)/pytest --durations=15 tests e2e; rc=$$?; \
	$(BIN)/python -m tests.reliability.summary $(RELIABILITY_LOG) || rc=1; exit $$rc

## Bad inputs (generated and the corpus), secret hygiene and the fault e2e tests, then the summary:
## inputs tried and handled, faults injected and survived, secrets found (must be 0).
RELIABILITY_LOG ?= .reliability/results.jsonl
RELIABILITY_E2E ?= $(wildcard e2e/test_faults.py)
reliability: venv $(if $(RELIABILITY_E2E),binaries)
	@rm -f $(RELIABILITY_LOG)
	@UPGRADER_RELIABILITY_LOG=$(abspath $(RELIABILITY_LOG)) $(BIN)/pytest tests/reliability $(RELIABILITY_E2E); rc=$$?; \
	$(BIN)/python -m tests.reliability.summary $(RELIABILITY_LOG) || rc=1; exit $$rc

lint: venv
	$(BIN)/ruff check upgrader tests e2e
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: venv
	$(BIN)/pytest tests

e2e: binaries
	$(BIN)/pytest e2e

## A long-lived local cluster: prints the kubeconfig path.
cluster-up: cluster-binaries
	@$(BIN)/python -m e2e.harness.cluster up

## The Linkerd-like world on the local cluster: chart repo, injector, Linkerd and the sample mesh.
WORLD_ARGS ?= --version stable-2.13.7 --ha --viz
world-up: cluster-binaries
	@$(BIN)/python -m e2e.fixtures.world up $(WORLD_ARGS)

cluster-down: venv
	@$(BIN)/python -m e2e.harness.cluster down

## Benchmarks at scale (e2e/bench.py; nothing here is timed inside a test): data-plane restarts against the
## ideal and a naive kubectl baseline, and discovery+plan, each size on a fresh local cluster. Prints a table
## and writes JSON and a PNG plot under bench/results/. Pick scenarios and sizes with BENCH_ARGS, e.g.
## BENCH_ARGS="--only restart --restart-sizes 20x10" (python -m e2e.bench --help lists the flags).
BENCH_ARGS ?= --restart-sizes 20x10,100x10,200x10 --plan-sizes 100x5x2,1000x5x2
bench: cluster-binaries
	$(BIN)/python -m e2e.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .reliability .pytest_cache .mypy_cache .ruff_cache .import_linter_cache *.egg-info
