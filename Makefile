# Two commands for a new user: `make demo` and `make test`. Both build the virtualenv
# on first use and re-install only when pyproject.toml changes. `make test-fast` is the
# inner loop while editing: no PostgreSQL, browser, Prefect or slow tests.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_HOME := $(or $(ROLLOUT_HOME),var)
# The demo replaces its registry: every location is the demo home's own, whatever the
# shell points at (a production registry, warehouse, plan or SendGrid key). The landing
# folder, outbox and reports hang off ROLLOUT_HOME (no setting of their own); `rollout
# sample` and `rollout demo` refuse a home or warehouse a sample did not make (exit 3).
DEMO_ENV := env -u ROLLOUT_REGISTRY_URL -u ROLLOUT_WAREHOUSE -u ROLLOUT_PLAN -u SENDGRID_API_KEY ROLLOUT_HOME=$(DEMO_HOME)

.PHONY: demo test test-fast lint format bench clean screenshot

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing rollout and its dependencies into $(VENV) (first run: a few minutes)"
	@$(BIN)/python -m pip install -qq --upgrade pip
	@$(BIN)/python -m pip install -qq -e '.[dev]'
	@touch $(STAMP)

# `make demo PLAN=plans/github-2023.yaml` plays another shipped plan over its own
# calendar, on a sample fitted to its cohort days (metrics and cohorts every 4 weeks, and on
# each cohort day: some plans span two years).
demo: $(STAMP)
ifneq ($(PLAN),)
	@echo "== registry schema"
	$(DEMO_ENV) ROLLOUT_PLAN=$(PLAN) $(BIN)/rollout db upgrade
	@echo "== sample registry (small), its download history fitted to $(PLAN)'s cohort days"
	$(DEMO_ENV) ROLLOUT_PLAN=$(PLAN) $(BIN)/rollout sample --scale small --seed 7 --for-plan --replace --confirm registry.db
	@echo "== $(PLAN), day by day over its calendar (simulated clock)"
	$(DEMO_ENV) ROLLOUT_PLAN=$(PLAN) $(BIN)/rollout demo --metrics-every 28
	@echo "== where each step of the plan stands"
	$(DEMO_ENV) ROLLOUT_PLAN=$(PLAN) $(BIN)/rollout plan show
	@echo "== done: the report is under $(DEMO_HOME)/reports/ (the story's last day)"
else
	@echo "== registry schema"
	$(DEMO_ENV) $(BIN)/rollout db upgrade
	@echo "== sample registry (small: ~20k real npm packages, 12k accounts; downloads to 2022-03-13)"
	@# Replaces $(DEMO_HOME)/registry.db only if an earlier demo made it (else exit 3),
	@# and with it that demo's warehouse, outbox/ and reports/.
	$(DEMO_ENV) $(BIN)/rollout sample --scale small --seed 7 --end 2022-03-13 --days 110 --replace --confirm registry.db
	@echo "== the reference plan, day by day from 2021-12-01 to 2022-05-10 (simulated clock)"
	$(DEMO_ENV) $(BIN)/rollout demo --start 2021-12-01 --end 2022-05-10
	@echo "== where each step of the plan stands"
	$(DEMO_ENV) $(BIN)/rollout plan show
	@echo "== done: open $(DEMO_HOME)/reports/2022-05-10/adoption.html in a browser;"
	@echo "   the warehouse is $(DEMO_HOME)/warehouse.duckdb (docs/warehouse.md), the emails $(DEMO_HOME)/outbox/"
endif

# docs/report.png, the README's picture of the report: the top of the demo's adoption
# report in headless Chromium (tests/support/screenshot.py); exit 2 without `make demo`.
screenshot: $(STAMP)
	$(BIN)/python -m tests.support.screenshot --home $(DEMO_HOME) --out docs/report.png

# The whole suite, with lint first. Chromium is installed if missing (as root with apt;
# otherwise it stops before any test with the command to run), and the PostgreSQL tests
# get a throwaway server of their own (tests/support/with-postgres), unless
# ROLLOUT_TEST_POSTGRES_URL names one. CI=true makes PostgreSQL a must (.ci/run).
# Each xdist worker takes whole modules, and all of tests/e2e, so an expensive fixture
# (a Prefect server, a demo) is built once (tests/conftest.py, pytest_xdist_make_scheduler).
# The 15 slowest tests are listed at the end: where the suite's time goes. One worker
# more than the cores: about a third of the suite's time is spent waiting (on Prefect
# servers and workers, PostgreSQL, subprocesses stopped and leases running out), which
# the third worker's CPU fills (bench/RESULTS.md, `make test`).
test: $(STAMP)
	tests/support/ensure-chromium
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	tests/support/with-postgres $(BIN)/pytest -n $$(($$(nproc) + 1)) --durations=15

# Leaves out what needs PostgreSQL, Chromium or Prefect, and the slow tests (markers
# assigned in tests/conftest.py), so it needs nothing but the virtualenv.
test-fast: $(STAMP)
	$(BIN)/pytest -n auto -m "not browser and not prefect and not postgres and not slow"

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
