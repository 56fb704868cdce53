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
	@echo "== sample registry (small: ~20k real npm packages, 12k accounts; downloads to 2022-03-13)"
	$(BIN)/rollout sample --scale small --seed 7 --end 2022-03-13 --days 110 --replace
	rm -rf $(DEMO_HOME)/warehouse.duckdb $(DEMO_HOME)/warehouse.duckdb.wal $(DEMO_HOME)/outbox $(DEMO_HOME)/reports
	@echo "== the reference plan, day by day from 2021-12-01 to 2022-05-10 (simulated clock)"
	$(BIN)/rollout demo --start 2021-12-01 --end 2022-05-10
	@echo "== where each step of the plan stands"
	$(BIN)/rollout plan show
	@echo "== done: open $(DEMO_HOME)/reports/2022-05-10/adoption.html in a browser;"
	@echo "   the warehouse is $(DEMO_HOME)/warehouse.duckdb (docs/warehouse.md), the emails $(DEMO_HOME)/outbox/"

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n auto

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
