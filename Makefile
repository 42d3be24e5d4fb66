# OmniQuant Streams — developer entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_SECONDS ?= 90
RUN_ARGS ?= --duration $(RUN_SECONDS)
SHARED_DATA ?= ../shared/data
BACKTEST_TICKS ?= $(SHARED_DATA)/Lean/Data/equity/usa/tick/spy/20131007_trade.zip
BACKTEST_ARGS ?= --strategy sma-crossover --param fast=10 --param slow=30 --bar 1m \
	--quantity 100 --long-only

.DEFAULT_GOAL := help
.PHONY: help deps venv up down status topics run backtest test test-backtest test-multibroker test-unit lint fmt docs bench clean
.PHONY: test-alerts test-fuzz test-chaos test-chaos-ci test-secure

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

deps: ## install missing system packages (Java 17+, Maven, redis-server)
	@bash scripts/ensure-system-deps.sh

$(BIN)/omniquant: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/omniquant ## create .venv and install the project with dev tools

up: deps venv ## start the local stack (Kafka KRaft, Redis; chDB embedded)
	$(BIN)/omniquant up

down: venv ## stop the local stack
	$(BIN)/omniquant down

status: venv ## show local services and whether they answer
	$(BIN)/omniquant status

topics: up ## create the catalog's topics
	$(BIN)/omniquant topics create

run: up ## run the whole pipeline for RUN_SECONDS (default 90), then print where the data is
	$(BIN)/omniquant run $(RUN_ARGS)

backtest: up ## SMA 10/30 backtest on SPY 2013-10-07 (BACKTEST_TICKS; a synthetic day if absent)
	@ticks="$(BACKTEST_TICKS)"; \
	if [ ! -e "$$ticks" ]; then \
		ticks=.omniquant/synthetic/spy-synthetic-day.csv; \
		echo "$(BACKTEST_TICKS) not found: backtesting a synthetic day ($$ticks)"; \
		$(BIN)/python -c "from pathlib import Path; from omniquant.backtest import \
			write_synthetic_day as w; w(Path('$$ticks'))"; \
	fi; \
	$(BIN)/python -m omniquant.backtest "$$ticks" $(BACKTEST_ARGS)

test: deps venv ## run the whole test suite against real Kafka, Redis and chDB
	@set +e; $(BIN)/pytest $(PYTEST_ARGS); code=$$?; \
	if [ $$code -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$code

test-multibroker: deps venv ## the 3-node KRaft cluster tests (broker and controller killed)
	$(BIN)/pytest -m multibroker tests/test_kafka_cluster.py tests/test_cluster_pipeline.py $(PYTEST_ARGS)

test-fuzz: deps venv ## fuzz every input topic (hypothesis + seeded corruption; bounded)
	$(BIN)/pytest -m fuzz $(PYTEST_ARGS)

test-chaos: deps venv ## kill loops over every stage, Redis restart, ClickHouse outage
	$(BIN)/pytest -m chaos $(PYTEST_ARGS)

# A bounded part of the chaos suite (~8 min here, in .ci/run): Redis restarted under the gate
# and execution, execution and three stateful stages (signals, the risk gate, portfolio)
# SIGKILLed 20 times each. Its pytest process once died of a segmentation fault in CI with
# no traceback: scripts/chaos-ci.sh runs it under gdb, which prints the stacks of a crash
# (and runs the suite once more).
CHAOS_CI ?= test_redis_restarted or test_execution_killed or (test_stage_killed_20_times and (signals or risk-gate or portfolio))
test-chaos-ci: deps venv ## a bounded part of the chaos suite (~8 min; under gdb: a crash prints its stacks)
	@bash scripts/chaos-ci.sh $(BIN)/pytest -m chaos tests/test_chaos_pipeline.py -k "$(CHAOS_CI)" $(PYTEST_ARGS)

test-secure: deps venv ## SASL_SSL + ACLs: the pipeline secured, refusals, secret scan
	$(BIN)/pytest -m secure $(PYTEST_ARGS)

test-backtest: deps venv ## the full-day backtest reference and determinism tests (minutes each)
	$(BIN)/pytest -m backtest tests/test_backtest_reference.py $(PYTEST_ARGS)

test-restart: deps venv ## restart/rebalance tests of signals and execution (timing-sensitive)
	$(BIN)/pytest -m restart $(PYTEST_ARGS)

test-unit: venv ## fast tests only (no services)
	$(BIN)/pytest -m "not integration and not e2e" $(PYTEST_ARGS)

test-alerts: deps venv ## promtool: check the alert rules and prometheus.yml, run tests/promtool
	$(BIN)/pytest tests/test_alert_rules.py $(PYTEST_ARGS)

lint: venv ## ruff + mypy + import-linter (layer contracts in .importlinter)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

docs: venv ## regenerate the README's stage table from the stage registry
	$(BIN)/python -c "from pathlib import Path; from omniquant.stages import render_readme; \
	p = Path('README.md'); p.write_text(render_readme(p.read_text()))"

fmt: venv ## format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: venv ## benchmarks (print ratios against a baseline measured in the same run)
	@for b in benchmarks/bench_*.py; do [ -e "$$b" ] && $(BIN)/python "$$b"; done; true

clean: ## remove the venv and local state (stop the stack first)
	rm -rf $(VENV) .omniquant .pytest_cache .mypy_cache .ruff_cache
