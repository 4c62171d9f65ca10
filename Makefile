# Two commands matter: `make demo` and `make test`. Each sets up .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-faults lint format bench clean dev-up dev-down tools/promtool

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/scorer demo

# promtool checks deploy/prometheus (tests/unit/test_promtool.py). Debian's `prometheus` package ships it:
# fetched with apt-get download and unpacked without installing anything (no root needed, no service started).
PROMTOOL := $(VENV)/tools/promtool

tools/promtool: $(PROMTOOL)

$(PROMTOOL):
	rm -rf $(VENV)/tools/.deb && mkdir -p $(VENV)/tools/.deb
	cd $(VENV)/tools/.deb && (apt-get download prometheus || (apt-get update -qq && apt-get download prometheus))
	dpkg-deb -x $(VENV)/tools/.deb/prometheus_*.deb $(VENV)/tools/.deb/root
	cp $(VENV)/tools/.deb/root/usr/bin/promtool $@.part && mv $@.part $@
	rm -rf $(VENV)/tools/.deb
	$@ --version

# lint + unit + integration + poison pills: a few minutes. The long fault-injection runs are `make test-faults`;
# CI (.ci/run) runs both.
test: $(STAMP) $(PROMTOOL)
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
