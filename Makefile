# Two commands for a new user: `make demo` and `make test`. Both build the virtualenv
# on first use and re-install only when pyproject.toml changes.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_HOME := $(or $(ROLLOUT_HOME),var)

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing rollout and its dependencies into $(VENV) (first run: a few minutes)"
	@$(BIN)/python -m pip install -qq --upgrade pip
	@$(BIN)/python -m pip install -qq -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	@echo "== registry schema"
	$(BIN)/rollout db upgrade
	@echo "== sample registry (small: ~20k real npm packages)"
	$(BIN)/rollout sample --scale small --seed 7 --replace
	@echo "== ingest landing files into a fresh warehouse"
	rm -f $(DEMO_HOME)/warehouse.duckdb $(DEMO_HOME)/warehouse.duckdb.wal
	$(BIN)/rollout ingest
	@echo "== what the warehouse holds"
	$(BIN)/rollout summary
	@echo "== package metrics and cohorts for 2022-02-01 (the reference plan's thresholds)"
	$(BIN)/rollout metrics --as-of 2022-02-01
	$(BIN)/rollout cohorts build --as-of 2022-02-01
	@echo "== what-if: high-impact at 5M weekly downloads or 1000 dependents"
	$(BIN)/rollout cohorts simulate --weekly-downloads-gt 5000000 --dependents-gte 1000
	@echo "== done: the warehouse is $(DEMO_HOME)/warehouse.duckdb (see docs/warehouse.md);"
	@echo "   try: $(BIN)/rollout cohorts show top-100 --without-2fa"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
