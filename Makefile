# Every target sets up what it needs: a fresh machine needs only `make run` or `make test`.
# A Python every user can read: in secure mode VSMs run under uids of their own and must still
# load the interpreter and its standard library (one under /root, a pyenv say, they cannot).
PY ?= $(firstword $(wildcard /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3.11) python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INSPECTOR_DIR := tests/mcp_inspector
INSPECTOR := $(INSPECTOR_DIR)/node_modules/.installed
STATE_DIR ?= $(CURDIR)/.state
NAMESPACE ?= vsm
BROKER ?= auto

.PHONY: all venv bytecode run demo test test-unit test-integration test-stress lint format typecheck \
        bench bench-quick broker dist clean test-slow

all: lint typecheck test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Byte-code for every module, written now: an environment with PYTHONDONTWRITEBYTECODE would
# otherwise compile vsmctl's modules from source on every command (about 25 ms of its start).
# Cheap when nothing changed: only modules newer than their .pyc are compiled.
bytecode: $(STAMP)
	@$(BIN)/python -m compileall -q vsmd vsmctl bench >/dev/null

# The MCP Inspector's CLI, an MCP client written by others, drives `vsmctl mcp` in
# tests/integration/test_mcp_inspector.py; the lock file pins it and all it pulls in. npm warns
# that it asks for a newer Node: its CLI over stdio, all the test uses, runs on Node 20. No
# install scripts: its only one sets up a source checkout and does nothing in node_modules.
$(INSPECTOR): $(INSPECTOR_DIR)/package.json $(INSPECTOR_DIR)/package-lock.json
	@command -v npm >/dev/null || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm)
	npm ci --prefix $(INSPECTOR_DIR) --no-audit --no-fund --ignore-scripts
	touch $(INSPECTOR)

# A broker for the tests: the machine's RabbitMQ, started if it is installed but not answering.
broker: $(STAMP)
	@command -v rabbitmq-server >/dev/null || [ "$$(id -u)" != 0 ] || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server)
	@$(BIN)/python -m vsmd.broker.ensure

# Runs vsmd in the foreground with a small demo tree; Ctrl-C stops the tree and the daemon.
# BROKER=auto uses the local RabbitMQ when it answers, else starts a private node.
run: $(STAMP) bytecode
	@mkdir -p $(STATE_DIR)
	$(BIN)/vsmd run --broker $(BROKER) --namespace $(NAMESPACE) --state-dir $(STATE_DIR) --demo

# The loop: everything but the stress tests and the slowest integration tests (make
# test-stress and make test-slow run those; CI runs all three).
test: $(STAMP) bytecode broker $(INSPECTOR)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -m "not stress and not slow"

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

test-integration: $(STAMP) bytecode broker $(INSPECTOR)
	$(BIN)/pytest -q tests/integration

# The integration tests marked slow: about 10 s or more each (a broker outage, a partition,
# the hostile agent, restarted embedded brokers, ...).
test-slow: $(STAMP) broker $(INSPECTOR)
	$(BIN)/pytest -q -m "slow and not stress"

# The slow ones: 1,000 VSMs, chaos and a daemon restart at scale (private RabbitMQ nodes), fuzz.
test-stress: $(STAMP) broker
	$(BIN)/pytest -q -m stress tests/stress

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(STAMP)
	$(BIN)/mypy

bench: $(STAMP) bytecode broker
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench

bench-quick: $(STAMP) bytecode broker
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python -m bench --quick

# The wheel and the sdist, built in an isolated environment as pip would.
dist: $(STAMP)
	$(BIN)/python -m build --outdir dist .

clean:
	rm -rf dist $(VENV) .state .pytest_cache .mypy_cache .ruff_cache *.egg-info
	rm -rf $(INSPECTOR_DIR)/node_modules
