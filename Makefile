# Two commands matter: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-faults lint format bench clean dev-up dev-down

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scorer demo

# lint + unit + integration + poison pills: a few minutes. The long fault-injection runs are `make test-faults`;
# CI (.ci/run) runs both.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -m "not slow"

test-faults: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.sidecar

dev-up: $(STAMP)
	$(BIN)/scorer dev up

dev-down: $(STAMP)
	$(BIN)/scorer dev down

clean:
	rm -rf $(VENV) .scorer .pytest_cache .ruff_cache *.egg-info
