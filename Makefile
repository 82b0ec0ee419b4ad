# Two commands on a fresh machine: `make demo` and `make test`. Each bootstraps .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The CPU wheel is installed first: a bare `torch` requirement would pull a multi-GB CUDA build.
# GPU worker images override it, e.g. TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>".
# --no-compile: Python writes bytecode on first import, for the modules used, instead of all of the
# thousands torch and transformers ship (a fresh install is faster; nothing else changes).
TORCH_SPEC ?= torch==2.13.0

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: demo test test-fast chaos lint clean automations setup deploy

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile $(TORCH_SPEC)
	$(BIN)/pip install --quiet --no-compile -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/retrainer demo

# Two workers (pytest-xdist): most tests wait on servers, workers and subprocesses, so two share even a
# 2-core machine well (39 min serial, 21-31 min on two, measured on one). A module runs whole on one
# worker, the longest first (tests/scheduling.py). TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25

# The tests that need no SeaweedFS, Prefect server, browser, PostgreSQL or training and are not slow
# (markers in pyproject.toml): the quick loop while editing. `make test` runs them all. With ephemeral
# Prefect servers off, a test here that runs a flow fails (it is missing its `prefect` mark).
test-fast: $(STAMP)
	PREFECT_SERVER_EPHEMERAL_ENABLED=false HF_HUB_OFFLINE=1 \
	  $(BIN)/pytest -m "not (s3 or prefect or browser or training or postgres or slow)"

# The fault-injection suite alone (it is also part of `make test`).
chaos: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m chaos

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Server-side alerting: BLOCK names a Prefect notification block, PREFECT_API_URL a Prefect server
# (+ PREFECT_API_AUTH_STRING=user:password with basic auth); refused (exit 2) without PREFECT_API_URL.
automations: $(STAMP)
	@test -n "$(BLOCK)" || { echo "usage: make automations BLOCK=slack-webhook/ml-alerts"; exit 2; }
	$(BIN)/retrainer alerts apply --block "$(BLOCK)"

# Against a Prefect server (PREFECT_API_URL, + PREFECT_API_AUTH_STRING with basic auth; refused without
# PREFECT_API_URL): work pools (+ automations with BLOCK=...), then deployments.
setup: $(STAMP)
	$(BIN)/retrainer setup $(if $(BLOCK),--block "$(BLOCK)")

deploy: $(STAMP)
	@test -n "$$PREFECT_API_URL" || { echo "make deploy: set PREFECT_API_URL to the Prefect server's API (and PREFECT_API_AUTH_STRING=user:password for a server with basic auth)" >&2; exit 2; }
	$(BIN)/prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml

clean:
	rm -rf $(VENV) .demo .pytest_cache .ruff_cache
