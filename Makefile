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

# promtool checks deploy/prometheus (tests/integration/test_promtool.py). One on PATH is used as it is;
# otherwise Debian's `prometheus` package is fetched with apt-get download and unpacked into .venv/tools
# (nothing is installed, no service started). Without root, apt reads its package lists from a private
# directory under .venv/tools, so this also works as a normal user on a Debian or Ubuntu machine.
PROMTOOL ?= $(or $(shell command -v promtool 2>/dev/null),$(VENV)/tools/promtool)
APT_DIR := $(CURDIR)/$(VENV)/tools/.apt
APT_PRIVATE := -o Dir::State::Lists=$(APT_DIR)/lists -o Dir::Cache=$(APT_DIR)/cache -o Debug::NoLocking=1

tools/promtool: $(PROMTOOL)

$(VENV)/tools/promtool:
	rm -rf $(APT_DIR) && mkdir -p $(APT_DIR)/lists/partial $(APT_DIR)/cache/archives/partial $(APT_DIR)/deb
	cd $(APT_DIR)/deb && { apt-get download prometheus 2>/dev/null \
	  || { apt-get $(APT_PRIVATE) update -qq && apt-get $(APT_PRIVATE) download prometheus; }; } \
	  || { echo "cannot fetch promtool with apt-get: install Prometheus' promtool and put it on PATH (or set PROMTOOL=/path/to/promtool)" >&2; exit 1; }
	dpkg-deb -x $(APT_DIR)/deb/prometheus_*.deb $(APT_DIR)/root
	cp $(APT_DIR)/root/usr/bin/promtool $@.part && mv $@.part $@
	rm -rf $(APT_DIR)
	$@ --version

# lint + unit + integration + poison pills: a few minutes. The long fault-injection runs are `make test-faults`;
# CI (.ci/run) runs both.
test: $(STAMP) $(PROMTOOL)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PROMTOOL=$(abspath $(PROMTOOL)) $(BIN)/python -m pytest -m "not slow"

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
